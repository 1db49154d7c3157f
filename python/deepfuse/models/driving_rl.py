"""driving-rl: a CNN policy learns to drive in the simulator by reinforcement learning (PPO).

PPO in one file, in the style of CleanRL's ``ppo_continuous_action.py``: hyper-parameters in one table (the
task's options, each with its help and limits, CleanRL's continuous-control defaults), the algorithm readable top
to bottom, every optimizer step the engine's (``Run.optimizer_step``: gradients clipped to ``max_grad_norm``).
Chosen over stable-baselines3's PPO because the batched simulator already is the vectorised environment (SB3
would step it through its own VecEnv layer and copy every observation), the network is ours from deepfuse layers
either way, and it adds no dependency.

Network: the camera (image_size² RGB uint8) → four FusedConv2d (16, 32, 64, 64 filters; 5x5 then 3x3, stride
2, ReLU fused) → FusedLinear(→ 256, ReLU) shared by the actor — FusedLinear(256 → 1): the mean steering of a
Gaussian with a learnt state-independent standard deviation — and the critic, FusedLinear(256 → 1). The
model's forward returns ``[mean steering, value]`` per image.

One ``--epochs`` step is one PPO iteration: ``num_envs`` × ``rollout_steps`` simulator steps with the current
policy, then ``update_epochs`` passes of clipped-surrogate updates over them in ``minibatches`` minibatches.
Rewards are the environment's (metres of progress scaled by lateral offset) times ``reward_scale``; truncated
episodes are bootstrapped with the critic. The simulator runs on the CPU (numba), the network on the run's
device. Checkpoints hold the simulator's cars and RNG, so ``--resume`` continues the very same episodes.

Validation and test: the deterministic policy (the Gaussian's mean) drives ``eval_tracks`` unseen tracks for
``eval_steps`` steps (``deepfuse.envs.closed_loop``): mean return (until first leaving the road), autonomy,
metres before leaving the road — beside the pure-pursuit expert's and a uniform random policy's return on the
same tracks. Target (GPU, <= 30 minutes of training): >= 80 % of the expert's return on unseen tracks
(untested: needs a GPU run).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepfuse.data import DataError
from deepfuse.data.driving import read_image
from deepfuse.nn import FusedConv2d, FusedLinear
from deepfuse.training.task import Data, Option, Task, positive


def _init(layer: nn.Module, std: float = math.sqrt(2)) -> nn.Module:
    """CleanRL's layer_init: orthogonal weights, zero bias."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.zeros_(layer.bias)
    return layer


def _multiple_of_16(size: int) -> str | None:
    return None if size % 16 == 0 else "a multiple of 16"


class DrivingPolicy(nn.Module):
    """Actor and critic on one CNN encoder. Input: camera images (B, H, W, 3) uint8 (any float dtype works too,
    in [0, 255]); output (B, actions + 1): the action means, then the value."""

    def __init__(self, image_size: int = 64, actions: int = 1, initial_log_std: float = -0.5) -> None:
        super().__init__()
        if image_size % 16 or image_size < 16:
            raise ValueError(f"image_size must be a multiple of 16 (>= 16), got {image_size}")
        self.encoder = nn.Sequential(
            _init(FusedConv2d(3, 16, 5, stride=2, padding=2, activation="relu")),
            _init(FusedConv2d(16, 32, 3, stride=2, padding=1, activation="relu")),
            _init(FusedConv2d(32, 64, 3, stride=2, padding=1, activation="relu")),
            _init(FusedConv2d(64, 64, 3, stride=2, padding=1, activation="relu")),
            nn.Flatten(),
            _init(FusedLinear(64 * (image_size // 16) ** 2, 256, activation="relu")),
        )
        self.actor = _init(FusedLinear(256, actions), 0.01)
        self.critic = _init(FusedLinear(256, 1), 1.0)
        self.log_std = nn.Parameter(torch.full((actions,), float(initial_log_std)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # (B, H, W, 3) → a channels_last (B, 3, H, W) view: no copy, and the convolutions take that layout
        x = images.permute(0, 3, 1, 2).to(self.actor.weight.dtype) / 255.0
        features = self.encoder(x)
        return torch.cat([self.actor(features), self.critic(features)], -1)

    def distribution(self, images: torch.Tensor):
        out = self(images).float()
        mean, value = out[:, :-1], out[:, -1]
        return torch.distributions.Normal(mean, self.log_std.float().exp().expand_as(mean)), value


class _Simulator:
    """What a run keeps between PPO iterations besides the checkpointed state (``run.live["simulator"]``): the
    vectorised environments and their current observations."""

    def __init__(self, config: dict, saved: dict | None, rank: int) -> None:
        # numba and gymnasium, loaded when training starts: importing the model registry stays free of them
        from deepfuse.envs.env import DriveVectorEnv

        self.envs = DriveVectorEnv(
            config["num_envs"],
            split="train",
            tracks=config["tracks"],
            image_size=config["image_size"],
            max_steps=config["max_steps"],
        )
        seed = config["seed"] + 1_000_003 * rank  # each process of a distributed run drives its own cars
        if saved is None:
            self.obs, _ = self.envs.reset(seed=seed)
        else:
            self.envs.reset(seed=seed)
            self.envs.load_state_dict(saved)
            self.obs = self.envs.observe()


class DrivingRLTask(Task):
    name = "driving-rl"
    description = "drive in the built-in simulator from a camera, learnt by reinforcement learning (PPO, CNN)"
    data_help = "nothing: driving-rl learns in the simulator (omit --data)"
    metric = "mean_return"
    maximize = True
    defaults = {"epochs": 300, "batch_size": 512, "lr": 3e-4, "weight_decay": 0.0, "max_grad_norm": 0.5}
    scheduler_interval = "epoch"  # the learning rate anneals once per PPO iteration (CleanRL)
    options = {
        "image_size": Option(64, "camera image size in pixels (a multiple of 16)", minimum=16, check=_multiple_of_16),
        "num_envs": Option(16, "cars driving at once in the vectorised simulator"),
        "rollout_steps": Option(128, "simulator steps per car in each PPO iteration"),
        "update_epochs": Option(4, "passes over each rollout"),
        "minibatches": Option(4, "minibatches per pass"),
        "tracks": Option(32, "training tracks"),
        "max_steps": Option(1000, "steps before an episode is truncated"),
        "eval_tracks": Option(4, "unseen tracks driven for validation, and as many for the test"),
        "eval_steps": Option(1000, "steps on each of them"),
        # PPO (CleanRL's continuous-control defaults)
        "gamma": Option(0.99, "discount per simulator step", maximum=1.0),
        "gae_lambda": Option(0.95, "the λ of generalised advantage estimation", maximum=1.0),
        "clip_coef": Option(0.2, "how far an update may move the probability ratio (and the value)", check=positive),
        "ent_coef": Option(0.0, "weight of the entropy bonus in the loss"),
        "vf_coef": Option(0.5, "weight of the value loss in the loss"),
        "norm_adv": Option(True, "normalise the advantages in each minibatch"),
        "clip_vloss": Option(True, "clip the value loss as the policy's (PPO's paper)"),
        "reward_scale": Option(0.1, "reward multiplier: keeps returns (metres of progress) near 1-10", check=positive),
        "initial_log_std": Option(
            -0.5, "the steering Gaussian's log standard deviation at the start", minimum=-5.0, maximum=2.0
        ),
    }

    # --- data, network, optimizer -----------------------------------------------------------------------------
    def load_data(self, path: Path | None, config: dict, state: dict | None = None) -> Data:
        if path is not None:
            raise DataError(path, "driving-rl learns in the built-in simulator and reads no data; omit --data")
        config = self.with_defaults(config)
        state = state or {"image_size": config["image_size"], "baselines": {}}
        tracks = list(range(config["eval_tracks"]))
        summary = (
            f"the simulator: {config['tracks']} training tracks, {len(tracks)} validation and {len(tracks)} test tracks"
        )
        return Data(train=None, val=tracks, test=tracks, state=state, summary=summary)

    def settings_problem(self, config: dict) -> str | None:
        samples = config["num_envs"] * config["rollout_steps"]
        if config["minibatches"] > samples:
            return (
                f"--minibatches {config['minibatches']} exceeds the {samples} samples of a rollout "
                "(--num-envs x --rollout-steps)"
            )
        return None

    def build(self, config: dict, state: dict) -> nn.Module:
        return DrivingPolicy(state["image_size"], initial_log_std=self.with_defaults(config)["initial_log_std"])

    def optimizer(self, model: nn.Module, config: dict, steps_per_epoch: int):
        """Adam (eps 1e-5, as CleanRL) with the learning rate annealed linearly to 0 over the iterations."""
        optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"], eps=1e-5)
        iterations = max(1, config["epochs"])
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: max(0.0, 1.0 - i / iterations))

    def example(self, batch_size: int, config: dict):
        size = self.with_defaults(config)["image_size"]
        images = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8)
        return {"image_size": size, "baselines": {}}, images, torch.randn(batch_size, 2)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Squared error of [mean action, value] to targets: a stand-in for PPO's loss with the same network
        cost, used by benchmarks, profiles and the backend tests (training uses ``train_epoch``)."""
        if outputs.dtype in (torch.float16, torch.bfloat16):
            outputs = outputs.float()
        return nn.functional.mse_loss(outputs, targets.to(outputs.dtype))

    # --- one PPO iteration ------------------------------------------------------------------------------------
    def train_epoch(self, run) -> dict[str, float]:
        config = run.config
        live = run.live.get("simulator")
        if live is None:  # the first iteration of this process (a resumed run restores the cars from ``extra``)
            live = run.live["simulator"] = _Simulator(config, run.extra.get("env"), run.place.rank)
        start = time.perf_counter()
        rollout, finished = self._rollout(run, live)
        rollout_seconds = time.perf_counter() - start
        obs, actions, logprobs, rewards, dones, values, done = rollout
        with torch.no_grad(), run.autocast():
            next_value = run.raw_model.distribution(torch.from_numpy(live.obs).to(run.device))[1].float().cpu()
        advantages, returns = _gae(rewards, values, dones, done, next_value, config["gamma"], config["gae_lambda"])
        stats = self._update(
            run,
            obs.flatten(0, 1),
            actions.flatten(0, 1),
            logprobs.flatten(),
            advantages.flatten(),
            returns.flatten(),
            values.flatten(),
        )
        samples = config["num_envs"] * config["rollout_steps"]
        run.extra["env"] = live.envs.state_dict()
        run.extra["env_steps"] = run.extra.get("env_steps", 0) + samples
        stats.update(
            episode_return=float(np.mean(finished)) if finished else float("nan"),
            episodes=float(len(finished)),
            samples_per_s=samples / rollout_seconds,
            env_steps=float(run.extra["env_steps"]),
        )
        return stats

    def _rollout(self, run, live: _Simulator):
        """``rollout_steps`` steps of every car with the current policy: ((observations, actions, log-probabilities,
        rewards, dones, values, the last done), returns of the episodes that ended)."""
        config, device = run.config, run.device
        envs, n, steps = live.envs, config["num_envs"], config["rollout_steps"]
        obs = torch.zeros((steps, n, *envs.single_observation_space.shape), dtype=torch.uint8)
        actions = torch.zeros((steps, n, 1))
        logprobs, rewards, dones, values = (torch.zeros((steps, n)) for _ in range(4))
        finished = []
        run.model.eval()  # no dropout or batch norm here; eval only selects the inference path of the layers
        progress = run.progress(steps, f"iteration {run.epoch + 1}/{config['epochs']}: rollout")
        done = torch.zeros(n)
        for t in range(steps):
            obs[t], dones[t] = torch.from_numpy(live.obs), done
            with torch.no_grad(), run.autocast():
                dist, value = run.raw_model.distribution(obs[t].to(device))
                action = dist.sample()
            actions[t], logprobs[t], values[t] = action.cpu(), dist.log_prob(action).sum(-1).cpu(), value.cpu()
            live.obs, reward, terminated, truncated, info = envs.step(actions[t].numpy())
            reward = torch.as_tensor(reward, dtype=torch.float32) * config["reward_scale"]
            cut = np.flatnonzero(truncated & ~terminated)
            if len(cut):  # the episode did not end, the clock did: bootstrap with the critic
                final = torch.from_numpy(np.stack(info["final_obs"][cut])).to(device)
                with torch.no_grad(), run.autocast():
                    reward[cut] += config["gamma"] * run.raw_model.distribution(final)[1].float().cpu()
            rewards[t] = reward
            done = torch.as_tensor(terminated | truncated, dtype=torch.float32)
            if "final_info" in info:
                finished += info["final_info"]["episode_return"][info["_final_info"]].tolist()
            progress.update(1)
        progress.close()
        return (obs, actions, logprobs, rewards, dones, values, done), finished

    def _update(self, run, obs, actions, logprobs, advantages, returns, values) -> dict[str, float]:
        """PPO's clipped-surrogate updates over one rollout (CleanRL's inner loop), each minibatch one of the
        engine's optimizer steps."""
        config, model, device = run.config, run.model, run.device
        clip = config["clip_coef"]
        total, batch = len(obs), len(obs) // config["minibatches"]
        model.train()
        losses, value_losses, policy_losses, entropies, kls, clipped = [], [], [], [], [], []
        first_value_loss = None
        for _ in range(config["update_epochs"]):
            order = torch.randperm(total)
            for begin in range(0, batch * config["minibatches"], batch):
                index = order[begin : begin + batch]
                mb_obs, mb_actions = obs[index].to(device), actions[index].to(device)
                mb_adv, mb_returns = advantages[index].to(device), returns[index].to(device)
                mb_old_logprob, mb_old_value = logprobs[index].to(device), values[index].to(device)
                with run.autocast():
                    out = model(mb_obs).float()
                mean, value = out[:, :-1], out[:, -1]
                std = run.raw_model.log_std.float().exp().expand_as(mean)
                dist = torch.distributions.Normal(mean, std)
                logprob, entropy = dist.log_prob(mb_actions).sum(-1), dist.entropy().sum(-1)
                log_ratio = logprob - mb_old_logprob
                ratio = log_ratio.exp()
                with torch.no_grad():
                    kls.append(((ratio - 1) - log_ratio).mean().item())
                    clipped.append(((ratio - 1.0).abs() > clip).float().mean().item())
                if config["norm_adv"]:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                policy_loss = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - clip, 1 + clip)).mean()
                if config["clip_vloss"]:
                    value_clipped = mb_old_value + (value - mb_old_value).clamp(-clip, clip)
                    value_loss = 0.5 * torch.max((value - mb_returns) ** 2, (value_clipped - mb_returns) ** 2).mean()
                else:
                    value_loss = 0.5 * ((value - mb_returns) ** 2).mean()
                loss = policy_loss - config["ent_coef"] * entropy.mean() + config["vf_coef"] * value_loss
                losses.append(run.optimizer_step(loss))
                if first_value_loss is None:
                    first_value_loss = value_loss.item()
                value_losses.append(value_loss.item())
                policy_losses.append(policy_loss.item())
                entropies.append(entropy.mean().item())
        explained = 1.0 - (returns - values).var().item() / max(returns.var().item(), 1e-12)
        return {
            "loss": float(np.mean(losses)),
            "value_loss": float(np.mean(value_losses)),
            "value_loss_first": first_value_loss,
            "value_loss_last": value_losses[-1],
            "policy_loss": float(np.mean(policy_losses)),
            "entropy": float(np.mean(entropies)),
            "approx_kl": float(np.mean(kls)),
            "clip_fraction": float(np.mean(clipped)),
            "explained_variance": explained,
        }

    # --- evaluation -------------------------------------------------------------------------------------------
    def validate(self, run, split: str):
        # the simulator (numba, gymnasium), loaded on first use: the model registry's start-up stays free of it
        from deepfuse.envs.closed_loop import drive, expert_pilot, random_pilot
        from deepfuse.envs.tracks import TrackSet, make_track

        indices = getattr(run.data, split)
        if not indices:
            return {}, None, None
        tracks = TrackSet.of(make_track(split, i) for i in indices)
        steps = run.config["eval_steps"]
        baselines = run.data.state.setdefault("baselines", {})
        key = f"{split}:{len(indices)}:{steps}"
        if key not in baselines:  # the same tracks every time: drive the expert and the random policy once
            baselines[key] = {
                "expert_return": drive(expert_pilot(), tracks, steps)["mean_return"],
                "random_return": drive(random_pilot(0), tracks, steps)["mean_return"],
            }
        metrics = drive(self.pilot(run.raw_model, run.data.state), tracks, steps)
        metrics.update(baselines[key])
        metrics["return_vs_expert"] = metrics["mean_return"] / max(metrics["expert_return"], 1e-9)
        return metrics, None, None

    def pilot(self, model: nn.Module, state: dict):
        """The policy's mean action as the simulator's driver (the RL camera, no exploration noise)."""
        # the simulator (numba, gymnasium), loaded on first use: the model registry's start-up stays free of it
        from deepfuse.envs.camera import rl_camera
        from deepfuse.envs.closed_loop import network_pilot

        return network_pilot("ppo", rl_camera(state["image_size"]), model, torch.from_numpy)

    def predict_inputs(self, model, inputs, config, state, out_dir):
        # Pillow: optional (deepfuse[models]); only predict reads image files
        from PIL import Image

        size, lines = state["image_size"], []
        device = next(model.parameters()).device
        for item in inputs:
            path = Path(item)
            if not path.is_file():
                raise DataError(path, f"no such file (expected a camera image; it is resized to {size}x{size})")
            image = np.array(Image.fromarray(read_image(path)).resize((size, size), Image.BILINEAR))
            out = model(torch.from_numpy(image)[None].to(device)).float()[0]
            lines.append(f"{path.name}: steering {out[0].item():+.4f}, value {out[1].item():.3f}")
        return lines


def _gae(rewards, values, dones, next_done, next_value, gamma: float, gae_lambda: float):
    """Generalised advantage estimates and returns (T, N); ``dones[t]`` marks observations that began a new
    episode (CleanRL's convention)."""
    steps = len(rewards)
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(steps)):
        if t == steps - 1:
            not_done, following = 1.0 - next_done, next_value
        else:
            not_done, following = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma * following * not_done - values[t]
        last = delta + gamma * gae_lambda * not_done * last
        advantages[t] = last
    return advantages, advantages + values


TASK = DrivingRLTask()
