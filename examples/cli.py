"""gradwatch configured from YAML with LightningCLI.

    python examples/cli.py fit --config examples/cli_config.yaml
"""

from lightning.pytorch.cli import LightningCLI
from lightning_train import RegressionData, RegressionModel

if __name__ == "__main__":
    LightningCLI(RegressionModel, RegressionData)
