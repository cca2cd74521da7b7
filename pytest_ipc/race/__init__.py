"""The ``ipc_race`` marker: many runs of a test, one verdict.

- :mod:`.hooks`: the pytest hooks, registered by the plugin;
- :mod:`.runner`: the run loop and pytest's protocol for a marked item;
- :mod:`.verdict`: run records, outcome comparison, the histogram, the one verdict table;
- :mod:`.shards`: ``--ipc-shards``, one campaign split into items;
- :mod:`.schema`: the facts of a test, as they travel on reports and into JSON;
- :mod:`.report`: the ``ipc race report`` section and the ``--ipc-report`` file.
"""
