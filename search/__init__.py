"""Search: tasks, rewards, the batched path evaluator and MCTS over decision vectors.

Also the base model's own supervision: ``teacher`` (greedy continuations of a prompt pool), ``closeness``
(KL to the base model over them) and ``heuristics`` (static paths from layer statistics).
"""
