"""The paper's Fig. 4 on MNIST-1D: SGD at learning rate 0.1, batch size varied; gap and ψ per epoch.

    python examples/batch_size_sweep.py [--seeds 3] [--epochs 15] [--dataset mnist1d|mnist] [--out results/sweep_batch_size]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sweep import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:], vary="batch_size", values="32,256,2048",
         title="Fig. 4 on MNIST-1D: SGD lr 0.1, batch size varied")
