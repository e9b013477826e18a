"""The paper's Fig. 5 on MNIST-1D: SGD at batch size 256, learning rate varied; gap and ψ per epoch.

    python examples/learning_rate_sweep.py [--seeds 3] [--epochs 15] [--dataset mnist1d|mnist] [--out results/sweep_learning_rate]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sweep import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:], vary="learning_rate", values="0.3,0.1,0.03",
         title="Fig. 5 on MNIST-1D: SGD batch 256, learning rate varied")
