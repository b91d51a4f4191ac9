"""``python -m drllm``: the ``drllm`` command."""

from drllm.cli.__main__ import main

if __name__ == "__main__":
    main()
