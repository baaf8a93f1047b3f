"""The trio_connmgr pytest plugin (registered through the ``pytest11`` entry point)."""
