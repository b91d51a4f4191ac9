"""Training and evaluation of routers, and the drllm command line."""
