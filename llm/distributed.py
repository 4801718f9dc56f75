"""Data-parallel training launched with ``torchrun``: the engine's own loop on every rank (``llm.parallel``).

    torchrun --nproc_per_node 2 -m llm.distributed --loss dpo --batch-size 4 --grad-accum 2 --out-dir runs/dpo-ddp
"""

from __future__ import annotations

import sys
from typing import Sequence

import torch.distributed as dist

from llm.config import TrainConfig
from llm.objective import NonFiniteLossError
from llm.parallel import init_distributed
from llm.training import train
from toykit.configs import parse_config

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse a TrainConfig command line, join the torchrun group and train; rank 0 prints the run directory."""
    cfg = parse_config(TrainConfig, argv, prog="torchrun --nproc_per_node N -m llm.distributed",
                       description="Data-parallel " + (TrainConfig.__doc__ or "").strip())
    world = init_distributed()
    try:
        result = train(cfg, world=world)
        if world.is_main:
            print(f"run directory: {result.run_dir}  ({world.world_size} processes)")
        return 0
    except NonFiniteLossError as err:
        print(f"error (rank {world.rank}): {err}", file=sys.stderr)
        return 1
    except (ValueError, FileExistsError) as err:
        print(f"error (rank {world.rank}): {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
