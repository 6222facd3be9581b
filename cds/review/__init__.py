"""Review: the worklist and the durable store of clinicians' actions."""
