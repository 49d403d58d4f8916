"""gradwatch configured from YAML with LightningCLI (needs pip install 'gradwatch[cli]').

    python examples/cli.py fit --config examples/cli_config.yaml
"""

from pytorch_lightning.cli import LightningCLI
from lightning_train import RegressionData, RegressionModel

if __name__ == "__main__":
    LightningCLI(RegressionModel, RegressionData)
