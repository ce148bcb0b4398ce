"""An example agent for threadkeeper: refunds with a tool, a policy subgraph and human approval."""
