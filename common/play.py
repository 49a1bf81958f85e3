"""Watch a trained agent: `make play PROJECT=<name> ckpt_path=<file|last> seed=0`.

The model is rebuilt from the config stored in the checkpoint and loaded with torch's safe
`weights_only` loader, as in `make predict`. A project opts in with the `PlaysEpisodes`
capability (`play_episode(seed)` -> frames, return, fps); the episode is written as an animated
GIF, and its return and path printed. An existing file is replaced only with overwrite=true.
"""

from pathlib import Path

from omegaconf import DictConfig

from common.capabilities import PlaysEpisodes
from common.entry import entry
from common.errors import UserError
from common.figures import save_gif
from common.predict import checkpoint_path, load_trained, output_beside


def play(cfg: DictConfig) -> tuple[Path, float]:
    """Play one episode of the checkpoint `cfg.ckpt_path`; return the GIF's path and the return."""
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
        raise UserError(f"seed={cfg.seed} must be a whole number >= 0")
    ckpt_path = Path(checkpoint_path(cfg))
    # By default beside the checkpoint: logs/<project>/<run>/checkpoints/last_episode_seed0.gif;
    # checked before the model loads: the cheap mistakes first.
    path = output_beside(cfg, ckpt_path, f"{ckpt_path.stem}_episode_seed{cfg.seed}.gif", ".gif")
    model = load_trained(cfg, str(ckpt_path), PlaysEpisodes, "play episodes")
    frames, total, fps = model.play_episode(seed=cfg.seed)
    save_gif(frames, fps, path)
    print(f"return {total:g} (seed {cfg.seed}, {len(frames)} frames at {fps:g} fps)")
    print(path)
    return path, total


@entry("play")
def main(cfg: DictConfig) -> None:
    play(cfg)


if __name__ == "__main__":
    main()
