"""Tools for testing protocols against trio_connmgr without a network."""
