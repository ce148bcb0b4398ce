"""Baseline (c): the graph ``langgraph dev`` serves (it attaches its own in-memory saver)."""

from tests.perf.baselines.graph import stock_graph

graph = stock_graph().compile()
