"""Tensor parallelism: one model split over N processes, one per GPU, started by torchrun.

`torchrun --nproc-per-node N -m llama2_colab demo PROMPT` starts N copies of the same program;
torchrun tells each its rank and the world size (RANK, LOCAL_RANK, WORLD_SIZE).
`load_tensor_parallel(plan)` loads the model with transformers' tensor parallelism: each process
holds 1/N of every attention and MLP layer and of the output head (the model's own `tp_plan`),
the processes exchange activations at each layer, and transformers starts the process group
itself (gloo on the CPU, NCCL on GPUs, one GPU per LOCAL_RANK). Every process then runs the same
`generate()` in lockstep and gets the same tokens; only rank 0 shows them.

transformers 5.15 no longer takes `from_pretrained(..., tp_plan="auto")` (its model constructor
refuses the keyword; 5.24 takes it again, deprecated). Both take
`distributed_config=DistributedConfig(tp_size=N)`, which applies the same plan, so that is what is
used here.

Across machines nothing changes but torchrun's own flags (`--nnodes`, `--node-rank`,
`--rdzv-endpoint`): see docs/serving.md.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import UserFacingError
from .models import ModelChoice, load_model_and_tokenizer, oom_as_advice
from .plan import TensorParallelPlan
from .runtime import ATTENTION, Settings

__all__ = [
    "DistributedEnv",
    "distributed_env",
    "finish_tensor_parallel",
    "load_tensor_parallel",
    "local_parameter_count",
    "shared_seed",
]


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits among the ones torchrun started (one process: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True for rank 0, the one process that prints."""
        return self.rank == 0


def distributed_env(env: Mapping[str, str] | None = None) -> DistributedEnv:
    """Return this process's rank, local rank and world size from torchrun's variables.

    UserFacingError when they cannot come from torchrun: not whole numbers, a rank not below the
    world size (a stale RANK left in the environment), or a world of several processes without
    MASTER_ADDR and MASTER_PORT (torchrun always sets them; without them every process would wait
    for the others in vain, or fail inside torch.distributed).
    """
    env = os.environ if env is None else env
    names = "RANK, LOCAL_RANK or WORLD_SIZE"
    try:
        world = DistributedEnv(
            int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))
        )
    except ValueError:
        raise UserFacingError(
            f"{names} is not a whole number.",
            "Start the processes with torchrun, which sets them.",
        ) from None
    _check_world(world, env)
    return world


def _check_world(world: DistributedEnv, env: Mapping[str, str]) -> None:
    """Raise UserFacingError unless torchrun could have set these variables."""
    unset = "Unset RANK, LOCAL_RANK and WORLD_SIZE to run as one process, or start it with torchrun"
    size = max(world.world_size, 1)  # WORLD_SIZE=0 is read as one process
    if not 0 <= world.rank < size or world.local_rank < 0:
        raise UserFacingError(
            f"This process has RANK={world.rank} and LOCAL_RANK={world.local_rank} in a world "
            f"of WORLD_SIZE={world.world_size}: a rank runs from 0 to WORLD_SIZE - 1, so these "
            "variables were not set by torchrun (a stale environment, from a cluster job?).",
            f"{unset} (`torchrun --nproc-per-node N -m llama2_colab demo ...`).",
        )
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if size > 1 and not env.get(name)]
    if missing:
        raise UserFacingError(
            f"WORLD_SIZE={world.world_size} says this is one of several processes, but "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set, so it cannot "
            "find the others: the variables were not set by torchrun.",
            f"{unset}, which sets them all: "
            f"`torchrun --nproc-per-node {world.world_size} -m llama2_colab demo ...`.",
        )


def _check_tp_plan(plan: TensorParallelPlan, world: DistributedEnv) -> None:
    """Refuse a plan this launch cannot run: wrong process count, too big, 4-bit."""
    if world.world_size != plan.gpus:
        raise UserFacingError(
            f"The plan splits {plan.model} over {plan.gpus} processes, but {world.world_size} "
            "were started.",
            f"Start it with `torchrun --nproc-per-node {plan.gpus} ...`.",
        )
    if not plan.fits:
        raise UserFacingError(f"{plan.model} does not fit: {plan.reason}", plan.advice)
    if plan.quantization is not None:
        raise UserFacingError(
            f"{plan.model} over {plan.gpus} GPUs needs {plan.format_label}, and transformers' "
            "tensor parallelism loads 16-bit weights only.",
            "Use more GPUs (`plan MODEL --gpu GPU --gpus N` says how many hold it in 16 bits), "
            "or serve it with vLLM (`--quantization bitsandbytes`, docs/serving.md).",
        )


def load_tensor_parallel(plan: TensorParallelPlan, token: str | None = None):
    """Load (model, tokenizer) split over this torchrun's processes, as the plan says.

    Call it in every process (the same call everywhere); each gets its own slice of the weights.
    """
    from transformers.distributed import DistributedConfig

    world = distributed_env()
    _check_tp_plan(plan, world)
    # No device_map: transformers puts each process on its own device (cuda:LOCAL_RANK, or CPU).
    settings = Settings(plan.device, plan.dtype, ATTENTION, None, plan.reason)
    with oom_as_advice(plan, "loading"):
        return load_model_and_tokenizer(
            ModelChoice(plan.model, "from the plan"),
            settings,
            token=token,
            model_kwargs={"distributed_config": DistributedConfig(tp_size=world.world_size)},
        )


def local_parameter_count(model) -> int:
    """Return how many parameters this process holds (its slices, not the whole tensors)."""
    total = 0
    for param in model.parameters():
        local = param.to_local() if hasattr(param, "to_local") else param  # a DTensor's slice
        total += local.numel()
    return total


def shared_seed(seed: int | None = None) -> int:
    """Return one seed for every process: rank 0's (a random one if None), sent to the others.

    Sampling must draw the same token on every rank or their generate() loops drift apart, so
    all ranks seed alike. Without torch.distributed started, the seed is returned as is.
    """
    import torch.distributed as dist

    chosen = [seed if seed is not None else random.SystemRandom().randrange(2**31)]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(chosen, src=0)
    return int(chosen[0])


def finish_tensor_parallel() -> None:
    """Wait for every process, then close the process group (torch warns if it is left open)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
