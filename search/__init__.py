"""Search: tasks, rewards, the batched path evaluator and MCTS over decision vectors."""
