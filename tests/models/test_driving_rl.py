"""driving-rl (PPO): the policy on fused layers agrees across backends; GAE; a smoke run end to end through the
engine (metrics beside the expert's and a random policy's returns), the value loss falls, resume is exact."""

import json
from pathlib import Path

import pytest
import torch

from deepfuse import cli, models
from deepfuse.data import DataError
from deepfuse.models.driving_rl import DrivingPolicy, _gae
from deepfuse.training.engine import RunError, make_config, prepare, train
from tests.models.helpers import assert_backend_agrees

TASK = models.get("driving-rl")
GAMMA, GAE_LAMBDA = TASK.options["gamma"].default, TASK.options["gae_lambda"].default
TINY = {
    "image_size": 16,
    "num_envs": 4,
    "rollout_steps": 32,
    "minibatches": 2,
    "update_epochs": 4,
    "tracks": 2,
    "eval_tracks": 1,
    "eval_steps": 40,
    "progress": False,
}


def test_policy_outputs_action_mean_and_value():
    state, images, targets = TASK.example(3, {"image_size": 32})
    model = TASK.build({}, state)
    out = model(images)
    assert images.dtype == torch.uint8 and out.shape == targets.shape == (3, 2)
    dist, value = model.distribution(images)
    assert dist.mean.shape == (3, 1) and value.shape == (3,)
    std = torch.exp(torch.tensor(TASK.options["initial_log_std"].default)).item()
    assert torch.allclose(dist.stddev, torch.full((3, 1), std))
    with pytest.raises(ValueError, match="multiple of 16"):
        DrivingPolicy(24)


def test_triton_agrees_with_torch(one_thread):
    # the policy has no batch norm or dropout: train and eval mode run the same kernels
    state, images, targets = TASK.example(2, {"image_size": 16})
    assert_backend_agrees(TASK, state, {}, images, targets, "triton", train=True)


def test_gae_matches_the_definition():
    torch.manual_seed(0)
    steps, n = 6, 3
    rewards, values = torch.randn(steps, n), torch.randn(steps, n)
    dones = (torch.rand(steps, n) < 0.3).float()
    next_done, next_value = torch.tensor([0.0, 1.0, 0.0]), torch.randn(n)
    advantages, returns = _gae(rewards, values, dones, next_done, next_value, GAMMA, GAE_LAMBDA)
    starts = torch.cat([dones[1:], next_done[None]])  # 1 where the following observation begins an episode
    following = torch.cat([values[1:], next_value[None]])
    for i in range(n):
        for t in range(steps):  # A_t = sum_k (γλ)^k δ_{t+k}, stopping where an episode ends
            total, scale = 0.0, 1.0
            for k in range(t, steps):
                delta = rewards[k, i] + GAMMA * following[k, i] * (1 - starts[k, i]) - values[k, i]
                total += scale * delta
                if starts[k, i]:
                    break
                scale *= GAMMA * GAE_LAMBDA
            assert advantages[t, i].item() == pytest.approx(total.item(), abs=1e-5)
    assert torch.allclose(returns, advantages + values)


def test_ppo_iteration_fits_the_value_and_records_the_simulator(tmp_path, one_thread):
    config = make_config(TASK, out=str(tmp_path / "run"), epochs=3, device="cpu", **TINY)
    run = prepare(TASK, config)
    stats = TASK.train_epoch(run)
    assert stats["value_loss_last"] < stats["value_loss_first"], stats  # same rollout, four passes
    # every minibatch is one of the engine's optimizer steps: 4 passes x 2 minibatches
    assert stats["env_steps"] == 4 * 32 and run.global_step == 4 * 2
    assert set(run.extra["env"]) == {"sim", "returns", "rng"}
    assert run.scheduler.get_last_lr()[0] == 3e-4  # the engine anneals it after the iteration (fit)


def test_smoke_run_end_to_end_and_exact_resume(tmp_path, one_thread, capsys, monkeypatch):
    whole = tmp_path / "whole"
    config = make_config(TASK, out=str(whole), epochs=2, device="cpu", **TINY)
    metrics = train(TASK, config, log=lambda line: None)
    assert metrics["split"] == "test" and metrics["epochs"] == 2
    for key in ("mean_return", "autonomy", "mean_distance_m", "expert_return", "random_return", "return_vs_expert"):
        assert key in metrics and key in metrics["val"]
    assert metrics["expert_return"] > metrics["random_return"]
    assert json.loads((whole / "metrics.json").read_text())["expert_return"] == metrics["expert_return"]
    assert len((whole / "history.csv").read_text().splitlines()) == 3

    halves = tmp_path / "halves"
    original = TASK.train_epoch

    def stop_in_the_second_iteration(run):
        if run.epoch == 1:
            raise KeyboardInterrupt  # Ctrl-C: the engine saves last.pt and re-raises
        return original(run)

    monkeypatch.setattr(TASK, "train_epoch", stop_in_the_second_iteration)
    with pytest.raises(KeyboardInterrupt):
        train(TASK, make_config(TASK, out=str(halves), epochs=2, device="cpu", **TINY), log=lambda line: None)
    monkeypatch.setattr(TASK, "train_epoch", original)
    # as a checkpoint written before PPO's hyper-parameters and max_grad_norm were settings: its config holds none
    # of them, and a resume runs with their defaults (the values such runs used)
    _without_settings_added_later(halves / "last.pt")
    train(TASK, make_config(TASK, out=str(halves), epochs=2, device="cpu", **TINY), resume=True, log=lambda line: None)
    first, second = (torch.load(f / "last.pt", weights_only=False) for f in (whole, halves))
    for name, value in first["model_state"].items():
        assert torch.equal(value, second["model_state"][name]), name
    assert (first["extra"]["env"]["sim"]["cars"] == second["extra"]["env"]["sim"]["cars"]).all()

    _without_settings_added_later(whole / "best.pt")
    assert cli.main(["eval", "driving-rl", "--checkpoint", str(whole / "best.pt")]) == 0
    assert "expert_return" in capsys.readouterr().out


def _without_settings_added_later(path: Path) -> None:
    payload = torch.load(path, weights_only=False)
    later = {"max_grad_norm", "gamma", "gae_lambda", "clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss"}
    later |= {"reward_scale", "initial_log_std"}
    assert later <= set(payload["config"])
    payload["config"] = {k: v for k, v in payload["config"].items() if k not in later}
    torch.save(payload, path)


def test_reads_no_data_and_checks_its_options(tmp_path):
    with pytest.raises(DataError, match="omit --data"):
        TASK.load_data(tmp_path, {})
    for setting, value, message in (
        ("image_size", 20, "--image-size must be a multiple of 16, got 20"),
        ("image_size", 0, "--image-size must be at least 16, got 0"),
        ("num_envs", 0, "--num-envs must be at least 1, got 0"),
        ("gamma", 1.5, r"--gamma must be in \[0, 1\], got 1.5"),
        ("clip_coef", 0.0, "--clip-coef must be positive, got 0.0"),
        ("max_grad_norm", -1.0, "--max-grad-norm must be positive, got -1.0"),
        ("minibatches", 9, "--minibatches 9 exceeds the 8 samples of a rollout"),
    ):
        with pytest.raises(RunError, match=message):
            make_config(TASK, **({"num_envs": 2, "rollout_steps": 4} | {setting: value}))
    assert make_config(TASK)["max_grad_norm"] == 0.5  # PPO clips; the supervised models do not
    assert make_config(models.get("digits"))["max_grad_norm"] is None


@pytest.mark.slow  # ~50 s on one busy core: 12 PPO iterations of 8 cars x 128 steps on 16x16 images
def test_ppo_learns_to_drive_unseen_tracks(tmp_path, one_thread):
    config = make_config(
        TASK,
        out=str(tmp_path / "run"),
        epochs=12,
        device="cpu",
        seed=0,
        image_size=16,
        num_envs=8,
        rollout_steps=128,
        tracks=8,
        eval_tracks=2,
        eval_steps=300,
        progress=False,
    )
    metrics = train(TASK, config, log=lambda line: None)
    # measured (a wheel off the road ends an episode): test return 209 (expert 230, random 13), 0.91 of the expert
    assert metrics["mean_return"] > 5 * metrics["random_return"], metrics
    assert metrics["return_vs_expert"] > 0.5, metrics


REFERENCE_RUN = Path(__file__).with_name("driving_rl_reference_run.json")


def _check_reference(metrics):
    """What README's driving-rl paragraph states for the reference run (40 iterations at 32 px, seed 0, 1 thread):
    at least 0.9 of the expert's return on the 4 unseen test tracks and no intervention in 1000 steps each."""
    assert metrics["return_vs_expert"] >= 0.9, metrics
    assert metrics["autonomy"] == 1.0 and metrics["interventions"] == 0, metrics
    assert metrics["mean_return"] > 20 * metrics["random_return"], metrics


def test_the_committed_reference_run_meets_what_the_readme_states():
    run = json.loads(REFERENCE_RUN.read_text())
    assert run["torch_threads"] == 1 and run["command"].endswith("--epochs 40 --image-size 32 --seed 0")
    _check_reference(run["metrics"])


@pytest.mark.slow  # ~7 min on one busy core: 40 PPO iterations of 16 cars x 128 steps on 32x32 images
def test_the_reference_run_reproduces(tmp_path, one_thread):
    run = {"epochs": 40, "image_size": 32, "seed": 0, "device": "cpu", "progress": False}
    config = make_config(TASK, out=str(tmp_path / "run"), **run)
    _check_reference(train(TASK, config, log=lambda line: None))
