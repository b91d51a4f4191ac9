"""Evaluation: accuracy against compute for the base model, routed models and static baselines.

``evaluate`` (``run_eval``), ``baselines`` (static decision vectors), ``report`` (tables and words),
``plots`` (figures) and ``lm_eval`` (the lm-evaluation-harness adapter). Imports ``drllm.router`` and
``drllm.search``, never ``drllm.train``.
"""
