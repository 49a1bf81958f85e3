"""The RL projects learn, end to end through the Trainer, on CartPole-v1 within small budgets;
their rollouts are collected by the weights being trained (on-policy); `make play` films a
trained agent; an episode reaches TensorBoard as an animated GIF."""

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.play import play
from common.train import train
from tests.conftest import make_config, train_once

# A uniformly random policy keeps CartPole's pole up for ~22 steps; an untrained greedy one ~9.
RANDOM_RETURN = 22

# Small budgets, 20 evaluation episodes: the best greedy return (the checkpoint's score) must
# be several times a random policy's. Measured with these settings (seed 42; best / test):
# dqn 150 / 150, ppo 322 / 392, reinforce 130 / 133, 10 s for the three on 2 CPU cores.
BUDGETS = {
    "dqn": ["trainer.max_epochs=2"],  # 2048 steps, learning from step 1000
    "ppo": ["trainer.max_epochs=3"],  # 15,360 steps
    "reinforce": ["trainer.max_epochs=1"],  # 10 rollouts of whole episodes of 8 environments
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """trained(project) -> (last.ckpt, metrics): each project trained once, when first asked."""
    runs = {}

    def train_project(project: str):
        if project not in runs:
            tmp = tmp_path_factory.mktemp(project)
            overrides = [f"project={project}", "logger=tensorboard", "data.eval_episodes=20"]
            runs[project] = train_once(
                tmp, [*overrides, *BUDGETS[project], "model.film_every_n_epochs=1"]
            )
        return runs[project]

    return train_project


# DQN's run (4 s) is left to `make test-all`: its pieces are unit-tested in test_rl.py, and it
# trains through the same agent base class and loaders as the other two.
@pytest.mark.parametrize(
    "project", [pytest.param("dqn", marks=pytest.mark.slow), "ppo", "reinforce"]
)
def test_agent_learns_cartpole_well_beyond_random(trained, project):
    _, metrics = trained(project)
    assert metrics["score"] > 4 * RANDOM_RETURN, metrics  # the best greedy mean of 20 episodes
    assert metrics["test/return"] > 2 * RANDOM_RETURN  # the best checkpoint, on other seeds
    assert metrics["train/samples_per_sec"] > 0  # environment steps per second


def test_an_episode_film_reaches_tensorboard_as_a_gif(trained):
    ckpt, _ = trained("ppo")
    run = ckpt.parent.parent
    films = sorted(p.name for p in (run / "images").iterdir())
    assert films == [f"val_episode_epoch{e:03d}.gif" for e in range(3)]  # one an epoch
    events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    images = events.Images("val/episode")
    assert len(images) == 3
    assert images[-1].encoded_image_string.startswith(b"GIF89a")
    assert (images[-1].width, images[-1].height) == (300, 200)


def test_make_play_writes_a_gif_and_prints_the_return(trained, tmp_path, capsys):
    ckpt, _ = trained("ppo")
    cfg = make_config(tmp_path, ["project=ppo", f"ckpt_path={ckpt}", "seed=3"], "play")
    path, total = play(cfg)
    assert path == ckpt.with_name("last_episode_seed3.gif")
    assert path.read_bytes().startswith(b"GIF89a")
    out = capsys.readouterr().out
    assert f"return {total:g}" in out and str(path) in out
    # The same seed plays the same episode.
    cfg.output, cfg.overwrite = str(tmp_path / "again.gif"), False
    assert play(cfg)[1] == total


def test_rollouts_are_collected_by_the_weights_being_trained(tmp_path):
    """Lightning fetches a batch ahead only from loaders without a length: ours has one, so
    each rollout is collected after the previous step's update (on-policy)."""
    from common.rl.policy_gradient import PolicyGradient

    seen = {"acted": [], "trained": []}
    act, step = PolicyGradient.act, PolicyGradient.training_step

    def spying_act(self, obs):
        seen["acted"].append(self.global_step)
        return act(self, obs)

    def spying_step(self, rollout, batch_idx):
        seen["trained"].append(self.global_step)
        return step(self, rollout, batch_idx)

    cfg = make_config(
        tmp_path,
        [
            "project=ppo",
            "trainer.max_epochs=1",
            "data.rollouts_per_epoch=3",
            "data.eval_episodes=2",
            "test=false",
        ],
    )
    PolicyGradient.act, PolicyGradient.training_step = spying_act, spying_step
    try:
        train(cfg)
    finally:
        PolicyGradient.act, PolicyGradient.training_step = act, step
    # 3 rollouts of 128 steps, 16 updates after each: every step of rollout k saw k * 16 updates.
    acted = torch.tensor(seen["acted"][: 3 * 128]).view(3, 128)
    assert seen["trained"] == [0, 16, 32]
    assert (acted == torch.tensor([0, 16, 32])[:, None]).all()


def test_a_checkpoint_tests_on_its_own_and_keeps_its_step_count(trained, tmp_path):
    ckpt, metrics = trained("reinforce")
    saved = torch.load(ckpt, weights_only=True)
    assert saved["env_steps"] == metrics["train/env_steps"]  # where exploration schedules were
    overrides = ["project=reinforce", "train=false", f"ckpt_path={ckpt}", "data.eval_episodes=20"]
    again = train(make_config(tmp_path, overrides))
    # One epoch: last.ckpt holds the weights the run tested as its best, on the same seeds.
    assert again["test/return"] == pytest.approx(metrics["test/return"])


def test_reinforce_keeps_its_monte_carlo_returns_through_evaluations(config, monkeypatch):
    """Evaluation must leave the recipe alone: no GAE in REINFORCE, epoch after epoch."""

    def no_gae(*args, **kwargs):
        raise AssertionError("REINFORCE estimated advantages with GAE")

    monkeypatch.setattr("common.rl.policy_gradient.gae", no_gae)
    cfg = config("project=reinforce", "trainer.max_epochs=3", "data.rollouts_per_epoch=1")
    cfg.data.eval_episodes, cfg.test = 2, False
    assert train(cfg)["val/env_steps"] > 0


@pytest.mark.slow
def test_a_resumed_dqn_refills_its_buffer_before_it_learns_again(tmp_path):
    """Replay transitions are not checkpointed: a resumed run waits learning_starts steps."""
    words = ["project=dqn", "data.eval_episodes=2", "test=false"]
    ckpt, _ = train_once(tmp_path, [*words, "trainer.max_epochs=1"])
    assert torch.load(ckpt, weights_only=True)["global_step"] == 128  # rollout 4 (of 4) learned
    # One more epoch: rollouts 5-7 refill (768 steps < 1000), rollout 8 learns: 128 updates.
    cfg = make_config(tmp_path, [*words, "trainer.max_epochs=2", f"ckpt_path={ckpt}"])
    train(cfg)
    resumed = Path(cfg.paths.output_dir, "checkpoints", "last.ckpt")
    assert torch.load(resumed, weights_only=True)["global_step"] == 256
