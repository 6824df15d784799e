"""One module per allocation strategy; registered in ``central.core.strategy.STRATEGIES``."""
