"""Built-in task definitions (installed as acdc.tasks)."""
