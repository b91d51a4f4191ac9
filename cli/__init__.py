"""The ``drllm`` command: a registry of the real functions (``__main__``), and the end-to-end demo."""
