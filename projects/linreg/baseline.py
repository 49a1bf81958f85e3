"""The closed-form answer that gradient descent should reach."""

import torch
from lightning.pytorch.callbacks import Callback
from rich.console import Console
from rich.table import Table


def least_squares(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Weights (F,) and bias minimizing ||x @ w + b - y||^2, by QR-based lstsq in float64."""
    design = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)  # (N, F+1)
    solution = torch.linalg.lstsq(design, y.double().unsqueeze(1)).solution.squeeze(1)
    return solution[:-1].float(), float(solution[-1])


def r2_score(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float(1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())


class ClosedFormBaseline(Callback):
    """After testing, fit least squares on the same training split and compare with the model.

    Logs `test/r2_closed_form` and `test/weight_gap` (max |w_model - w_lstsq|), plus
    `test/weight_error` (max |w_model - w_true|) when the data knows its true weights.
    """

    def on_test_epoch_end(self, trainer, pl_module):
        dm = trainer.datamodule
        x_train, y_train = (t.cpu() for t in dm.train_set.tensors)  # on a GPU with loader=device
        x_test, y_test = (t.cpu() for t in dm.test_set.tensors)
        w_ls, b_ls = least_squares(x_train, y_train)
        w_model = pl_module.net.weight.detach().cpu().squeeze(0)  # (F,)
        b_model = float(pl_module.net.bias.detach().cpu())
        metrics = {
            "test/r2_closed_form": r2_score(x_test @ w_ls + b_ls, y_test),
            "test/weight_gap": float((w_model - w_ls).abs().max()),
        }
        true_w, true_b = dm.known_weights or (None, None)
        if true_w is not None:
            metrics["test/weight_error"] = float((w_model - true_w).abs().max())
        for name, value in metrics.items():
            pl_module.log(name, value, sync_dist=True)  # the same on every rank: a no-op mean
        if trainer.is_global_zero:
            self._print_table(w_model, b_model, w_ls, b_ls, true_w, true_b)

    @staticmethod
    def _print_table(w_model, b_model, w_ls, b_ls, w_true, b_true):
        table = Table(title="linear regression: learned vs closed form")
        table.add_column("parameter")
        table.add_column("gradient descent", justify="right")
        table.add_column("least squares", justify="right")
        if w_true is not None:
            table.add_column("true", justify="right")
        for i in range(len(w_model)):
            row = [f"w[{i}]", f"{w_model[i]:.4f}", f"{w_ls[i]:.4f}"]
            table.add_row(*row, *([f"{w_true[i]:.4f}"] if w_true is not None else []))
        row = ["b", f"{b_model:.4f}", f"{b_ls:.4f}"]
        table.add_row(*row, *([f"{b_true:.4f}"] if w_true is not None else []))
        Console().print(table)
