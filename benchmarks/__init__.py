"""trio_connmgr's benchmark suite: ``python -m benchmarks`` (or ``make bench``).

Each group lives in its own module with a ``run(scale) -> list[Row]`` function:
:mod:`.hotpaths`, :mod:`.versus_libp2p`, :mod:`.planning`, :mod:`.sockets`,
:mod:`.memory`. Every row pairs a median with a baseline measured in the same
run; see ``benchmarks/README.md``.
"""
