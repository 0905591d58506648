"""How users reach corral from outside Python: the OpenAI-compatible server and the CLI."""
