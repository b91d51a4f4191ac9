"""W&B: one switch for search and train; online exactly when W&B has credentials."""

import pytest

from drllm.search import tracking
from drllm.train.lightning_setup import make_logger


def test_offline_unless_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    assert tracking.wandb_offline()
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert not tracking.wandb_offline()  # what `wandb login` writes
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.wandb_offline()


def test_train_logger_takes_project_name_and_tags(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = make_logger("wandb", tmp_path, "my-project", "run-1", ["kl", "smollm2"])
    assert logger._project == "my-project" and logger._wandb_init["name"] == "run-1"
    assert logger._wandb_init["tags"] == ["kl", "smollm2"]
    with pytest.raises(ValueError, match="W&B tag"):
        tracking.check_tags([""])
