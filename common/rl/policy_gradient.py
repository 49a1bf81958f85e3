"""Policy gradients: REINFORCE with a baseline (Williams 1992), and PPO (Schulman et al. 2017)
with generalized advantage estimates, as one module: they differ in how far the return looks
before the critic's estimate stands in for the rest, and in how many steps one rollout buys.

- REINFORCE with a baseline: whole episodes, Monte Carlo returns G_t; advantage G_t - V(s_t);
  one gradient step per rollout (`returns=monte_carlo`, `update_epochs=1`, `minibatches=1`).
- PPO: T-step rollouts, GAE(lambda) advantages bootstrapped from V; several epochs of
  minibatch steps per rollout, the ratio pi/pi_old clipped so that no step moves far from the
  policy that collected the data (`returns=gae`, `clip=0.2`). With one epoch of one minibatch
  the ratio is 1 and its gradient is REINFORCE's: that setting is A2C.
"""

import torch
import torch.nn.functional as F

from common.data.gym import Rollout, require_counts
from common.errors import UserError
from common.rl.agent import RLAgent
from common.rl.rollout import discounted_returns, gae


class PolicyGradient(RLAgent):
    """`net(obs_dim, num_actions)`: obs (B, obs_dim) -> (logits (B, A), value (B,)).

    Loss per minibatch: policy loss + `value_coef` * 0.5 (V - G)^2 - `entropy_coef` * entropy;
    gradients clipped to norm `max_grad_norm`. Advantages are normalized per minibatch.
    `rollout_steps` and `num_envs` are the data's (interpolated in the config): Monte Carlo
    returns need whole episodes, and a rollout must hold a sample for every minibatch.
    """

    def __init__(
        self,
        env: str,
        net,
        optimizer=None,
        scheduler=None,
        gamma: float = 0.99,
        returns: str = "gae",
        rollout_steps: int | None = 128,
        num_envs: int = 4,
        lam: float = 0.95,
        clip: float | None = 0.2,
        update_epochs: int = 4,
        minibatches: int = 4,
        value_coef: float = 0.5,
        entropy_coef: float = 0.01,
        max_grad_norm: float | None = 0.5,
        stop_when_solved: bool = True,
        film_every_n_epochs: int = 5,
    ):
        super().__init__(env, optimizer, scheduler, gamma, stop_when_solved, film_every_n_epochs)
        if returns not in ("gae", "monte_carlo"):
            raise UserError(f"model.returns={returns!r} is not one of gae, monte_carlo")
        if returns == "monte_carlo" and rollout_steps is not None:
            raise UserError(
                "model.returns=monte_carlo sums rewards to the end of each episode: it learns "
                "from whole episodes, data.rollout_steps=null"
            )
        require_counts("model", update_epochs=update_epochs, minibatches=minibatches)
        # The fewest samples a process's rollout can hold: whole episodes have one step each
        # at least. Checked here, alike in every process, rather than per rollout.
        fewest = num_envs * (rollout_steps or 1)
        if minibatches > fewest:
            raise UserError(
                f"model.minibatches={minibatches} is more than the {fewest} samples a rollout "
                "may hold: use fewer minibatches, or more data.rollout_steps or data.num_envs"
            )
        self.net = net(self.obs_dim, self.num_actions)
        self.return_estimate, self.lam, self.clip = returns, lam, clip
        self.update_epochs, self.minibatches = update_epochs, minibatches
        self.value_coef, self.entropy_coef = value_coef, entropy_coef
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """An action sampled from pi(.|s): exploring is the policy's own randomness."""
        logits, _ = self.net(obs.to(self.device))
        probs = logits.float().softmax(-1).cpu()  # (N, A)
        return torch.multinomial(probs, 1, generator=self.rng).squeeze(1)  # (N,)

    @torch.no_grad()
    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        logits, _ = self.net(obs.to(self.device))
        return logits.argmax(dim=1)

    @torch.no_grad()
    def advantages(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(advantages, returns, log pi_old(a|s)), each (T, N)."""
        logits, values = self.net(rollout.obs)  # (T, N, A), (T, N)
        old_logp = logits.log_softmax(-1).gather(-1, rollout.actions[..., None]).squeeze(-1)
        done = rollout.terminated | rollout.truncated
        if self.return_estimate == "monte_carlo":
            # What each step was followed by, to the end of its episode: no estimate in it. A
            # time limit ends the sum too (CartPole's 500 steps): the rewards after it are
            # not seen, where GAE bootstraps them from V.
            returns = discounted_returns(rollout.rewards, done, self.gamma)
            return returns - values, returns, old_logp
        next_values = self.net(rollout.next_obs)[1]  # (T, N): V of where each step landed
        advantages, returns = gae(
            rollout.rewards, values, next_values, rollout.terminated, done, self.gamma, self.lam
        )
        return advantages, returns, old_logp

    def loss(self, obs, actions, advantages, returns, old_logp) -> tuple[torch.Tensor, dict]:
        """The PPO (or, unclipped, policy-gradient) loss on B samples, and what to log."""
        logits, values = self.net(obs)  # (B, A), (B,)
        logp_all = logits.log_softmax(-1)
        logp = logp_all.gather(1, actions[:, None]).squeeze(1)
        ratio = (logp - old_logp).exp()  # pi / pi_old: 1 at the first step, with pi's gradient
        adv = (advantages - advantages.mean()) / (advantages.std(unbiased=False) + 1e-8)
        policy_loss = -(ratio * adv)
        if self.clip is not None:
            clipped = -(ratio.clamp(1 - self.clip, 1 + self.clip) * adv)
            policy_loss = torch.maximum(policy_loss, clipped)
        policy_loss = policy_loss.mean()
        value_loss = 0.5 * F.mse_loss(values, returns)
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
        loss = policy_loss + self.value_coef * value_loss - self.entropy_coef * entropy
        with torch.no_grad():
            stats = {
                "policy_loss": policy_loss,
                "value_loss": value_loss,
                "entropy": entropy,
                "approx_kl": ((ratio - 1) - ratio.log()).mean(),  # Schulman's k3 estimator
            }
        return loss, stats

    def training_step(self, rollout: Rollout, batch_idx: int):
        self.count_steps(rollout)
        advantages, returns, old_logp = self.advantages(rollout)
        valid = rollout.valid.flatten()  # (T * N,)
        samples = [
            x.flatten(0, 1)[valid]
            for x in (rollout.obs, rollout.actions, advantages, returns, old_logp)
        ]
        n = len(samples[0])
        for _ in range(self.update_epochs):
            # The same number of minibatches in every process (whole episodes vary in length):
            # DDP steps them together.
            order = torch.randperm(n, generator=self.rng).to(self.device)
            for index in order.tensor_split(self.minibatches):
                loss, stats = self.loss(*(x[index] for x in samples))
                self.learn(loss, self.max_grad_norm)
        self.tally("loss", loss)  # the last minibatch's
        for name, value in stats.items():
            self.tally(name, value)
