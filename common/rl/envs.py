"""Gymnasium environments for the agents: the vector environment they learn from, the seeded
episodes they are judged on, and an episode filmed as an animated GIF.

A policy here is a function from observations (N, obs_dim) float32 to actions (N,) int64.
"""

import os
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from common.errors import UserError

Policy = Callable[[torch.Tensor], torch.Tensor]


def make_env(env_id: str, **kwargs) -> gym.Env:
    """`gym.make(env_id)`, or one readable error for an unknown id, a missing extra, or an
    environment these agents cannot drive (they pick one of a few discrete actions from a
    vector observation)."""
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as err:  # NameNotFound, VersionNotFound, DependencyNotInstalled...
        known = ", ".join(sorted(e for e in gym.registry if e.split("-")[0] in CLASSIC))
        raise UserError(f"data.env={env_id}: {err} (discrete classic control: {known})") from None
    if not isinstance(env.action_space, gym.spaces.Discrete):
        env.close()
        raise UserError(
            f"data.env={env_id} has continuous actions ({env.action_space}); these agents choose "
            "one of a few discrete actions: CartPole-v1, Acrobot-v1 or MountainCar-v0"
        )
    space = env.observation_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape or ()) != 1:
        env.close()  # images, dicts: the agents' MLPs read one vector
        raise UserError(f"data.env={env_id} does not observe a vector ({space})")
    return env


CLASSIC = ("CartPole", "Acrobot", "MountainCar")  # the discrete ones of gymnasium[classic-control]


def spaces(env_id: str) -> tuple[int, int]:
    """(observation size, number of actions) of `env_id`: what the nets are sized by."""
    env = make_env(env_id)
    sizes = int(np.prod(env.observation_space.shape)), int(env.action_space.n)
    env.close()
    return sizes


def solved_at(env_id: str) -> float | None:
    """The return gymnasium calls solved (CartPole-v1: 475), or None."""
    return gym.spec(env_id).reward_threshold


def make_vector(env_id: str, num_envs: int, seed: int) -> gym.vector.VectorEnv:
    """`num_envs` copies stepped together, seeded seed, seed + 1, ... An episode that ends is
    reset in the same step (the observation returned is the new episode's first;
    `info["final_obs"]` holds the one it ended on), so every step is a real transition."""
    make_env(env_id).close()  # the readable error, before gymnasium's
    envs = gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="sync",  # classic control steps in microseconds: no processes
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )
    envs.reset(seed=seed)
    return envs


@torch.no_grad()
def evaluate(policy: Policy, env_id: str, seeds: list[int], device="cpu") -> torch.Tensor:
    """The return (sum of rewards) of one episode per seed, (len(seeds),): all of them stepped
    side by side, one batched policy call per step for the episodes still running."""
    envs = [make_env(env_id) for _ in seeds]
    obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds, strict=True)])
    returns = np.zeros(len(envs))
    running = np.arange(len(envs))  # indices of episodes not yet ended
    while len(running):
        actions = policy(torch.as_tensor(obs[running], device=device)).cpu().numpy()
        still = []
        for i, action in zip(running, actions, strict=True):
            obs[i], reward, terminated, truncated, _ = envs[i].step(action)
            returns[i] += reward
            if not (terminated or truncated):
                still.append(i)
        running = np.array(still, dtype=int)
    for env in envs:
        env.close()
    return torch.as_tensor(returns, dtype=torch.float32)


@torch.no_grad()
def film(policy: Policy, env_id: str, seed: int, every: int = 2) -> tuple[list, float, float]:
    """One episode: every `every`-th frame (H, W, 3) uint8, rendered off-screen, its return, and
    the frame rate that plays it in real time."""
    # Frames drawn off-screen need no display: without this, SDL looks for one and prints
    # "error: XDG_RUNTIME_DIR is invalid" on a headless machine. A user's own choice stands.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    env = make_env(env_id, render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    frames, total, t, done = [env.render()], 0.0, 0, False
    while not done:
        action = policy(torch.as_tensor(obs[None]))[0].item()
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        done = terminated or truncated
        t += 1
        if t % every == 0 or done:
            frames.append(env.render())
    env.close()
    return frames, total, env.metadata.get("render_fps", 30) / every
