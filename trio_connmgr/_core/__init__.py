"""The ground floor: state and decisions in plain synchronous Python.

Nothing in this package imports Trio or anything from the floors above it; time
is injected (a clock callable, or ``now`` passed in) so that every decision can be
tested synchronously and with Hypothesis.
"""
