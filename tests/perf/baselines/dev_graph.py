"""Baselines (c) and (d): the graph ``langgraph dev`` and Aegra serve (each attaches its own
saver: ``langgraph dev`` an in-memory one, Aegra its Postgres one)."""

from tests.perf.baselines.graph import stock_graph

graph = stock_graph().compile()
