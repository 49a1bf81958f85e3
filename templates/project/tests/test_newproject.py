"""The newproject project learns (made by `make new`; keep it passing as the project grows).

Its fast_dev_run smoke test comes from tests/test_smoke.py, which runs every project."""

from common.train import train


def test_newproject_learns_its_synthetic_data(config):
    cfg = config("project=newproject", "logger=csv", "trainer.max_epochs=2")
    assert train(cfg)["test/acc"] > 0.8  # chance is 1 / 4
