"""torchrun entry point for the DDP tests: ``diffq`` with each rank's final DiffQ state and
parameters dumped to ``$DIFFQ_TEST_DUMP/rank<RANK>.th``, so the test can check that the ranks
agree. The dump wraps ``DiffQuantizer.get_quantized_state`` here, in the tests, instead of a
hook in production code."""

import os
import sys

import torch

from diffq_cli.cli.app import main
from diffq_cli.quant import DiffQuantizer

DUMP_ENV = "DIFFQ_TEST_DUMP"


def _dumping(original):
    def get_quantized_state(self):
        state = original(self)
        directory = os.environ[DUMP_ENV]
        os.makedirs(directory, exist_ok=True)
        params = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save({"state": state, "params": params},
                   os.path.join(directory, f"rank{os.environ.get('RANK', '0')}.th"))
        return state

    return get_quantized_state


if __name__ == "__main__":
    DiffQuantizer.get_quantized_state = _dumping(DiffQuantizer.get_quantized_state)
    sys.argv[0] = "diffq"
    sys.exit(main())
