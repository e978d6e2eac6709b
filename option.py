"""Command-line options.

``build_parser()`` and ``parse_args(argv)`` do nothing at import. The flag names follow the
authors' CDSR/DASR/KDSR code, so their README and script commands parse; booleans are real
switches. A preset (``--preset``) replaces the defaults with a paper recipe; flags given
explicitly still win. ``parse_args`` validates the values and returns an ``argparse.Namespace``
that nobody mutates. KDSR's commands say ``--model='blindsr'`` (as DASR's do): with one of
KDSR's own flags (``KDSR_FLAGS``) that means KDSR (``authors_kdsr_model``).
"""
import argparse
import os
from typing import Dict, List, Optional, Tuple

# The argparse defaults are the "demo" preset: a short CPU run on the embedded photos that beats
# bicubic. "cdsr" and "dasr" are the authors' training recipes (CDSR README command; DASR
# defaults). Explicit flags always win over a preset.
PRESETS: Dict[str, Dict[str, object]] = {
    "demo": {},
    "cdsr": dict(model="CDSR", degradation="manet", scale=4, patch_size=48, batch_size=32,
                 blur_type="aniso_gaussian", sig_min=0.35, sig_max=5.0, lambda_1=4.0, lambda_2=1.0,
                 theta=0.0, epochs_encoder=-1, epochs_sr=500, freeze_epoch=600, lr_sr=1e-4,
                 lr_decay_sr=125, gamma_sr=0.5, test_every=1000, print_every=200, n_threads=4,
                 save="cdsr"),
    "dasr": dict(model="DASR", scale=4, patch_size=48, batch_size=32, blur_type="iso_gaussian",
                 sig_min=0.2, sig_max=4.0, sig=1.2, epochs_encoder=100, epochs_sr=500,
                 freeze_epoch=10 ** 6, lr_encoder=1e-3, lr_decay_encoder=60, gamma_encoder=0.1,
                 lr_sr=1e-4, lr_decay_sr=125, gamma_sr=0.5, test_every=1000, print_every=200,
                 n_threads=4, data_test="Set14", save="blindsr"),
    # KDSR's two recipes (KDSR-classic main_*_KDSRsMx4_stage{3,4}.sh): the teacher stage (their
    # stage 3), then the student's (stage 4) in one run. Their stage-4 --epochs_sr counts the
    # distillation-encoder epochs too (500 in all for aniso): ours counts the epochs after them.
    "kdsr-iso": dict(model="KDSR-S-M", scale=4, patch_size=64, batch_size=64, blur_type="iso_gaussian",
                     sig_min=0.2, sig_max=4.0, sig=3.6, noise=0.0, epochs_teacher=500,
                     lr_teacher=1e-4, lr_decay_teacher=125, gamma_teacher=0.5, epochs_encoder=0,
                     epochs_sr=600, lr_sr=1e-4, lr_decay_sr=150, gamma_sr=0.5,
                     freeze_epoch=10 ** 6, test_every=1000, print_every=200, n_threads=4,
                     data_test="Set14", save="kdsr_iso"),
    "kdsr-aniso": dict(model="KDSR-S-M", scale=4, patch_size=64, batch_size=64,
                       blur_type="aniso_gaussian", lambda_min=0.2, lambda_max=4.0, lambda_1=4.0,
                       lambda_2=1.5, theta=120.0, noise=25.0, epochs_teacher=500, lr_teacher=1e-4,
                       lr_decay_teacher=125, gamma_teacher=0.5, epochs_encoder=100,
                       lr_encoder=2e-4, lr_decay_encoder=60, gamma_encoder=0.1, epochs_sr=400,
                       lr_sr=1e-4, lr_decay_sr=125, gamma_sr=0.5, freeze_epoch=10 ** 6,
                       test_every=1000, print_every=200, n_threads=4, data_test="Set14",
                       save="kdsr_aniso"),
}
# KDSR's own flags: beside --model='blindsr' (the authors' name for every model) they mean KDSR.
KDSR_FLAGS = ("--pre_train_TA", "--pre_train_ST", "--st_save_epoch", "--temperature",
              "--n_feats", "--n_blocks", "--n_resblocks")
KDSR_WIDTHS = ("n_feats", "n_blocks", "n_resblocks")


def _resume_value(text: str) -> int:
    value = int(text)
    if value < -1:
        raise argparse.ArgumentTypeError("use -1 (latest), 0 (off) or an epoch number")
    return value


def _boolean(text: str) -> bool:
    """'true'/'false' (also 1/0, yes/no; any case): the authors pass ``--save_results False``."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def _add_switch(g, flag: str, help: str, default: bool = False) -> None:
    """A switch that also takes an explicit value: ``--flag``, ``--flag true``, ``--flag False``."""
    g.add_argument(flag, nargs="?", const=True, default=default, type=_boolean, metavar="BOOL", help=help)


class ArgumentParser(argparse.ArgumentParser):
    """The parser of every entry point and script: a bad flag ends with one line,
    ``error: ...``, and exit status 2 (as ``utility.run_cli`` reports every other bad input).
    Under torchrun every process parses the same command line: rank 0 alone prints the line."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n" if os.environ.get("RANK", "0") == "0" else None)


class _AcceptedOnly(argparse.Action):
    """An authors' flag whose only value (``choices``) is what we do anyway: nothing is stored."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        pass


class _AcceptedSwitch(_AcceptedOnly):
    """A switch of the authors' whose meaning is handled before parsing, or is what we do anyway:
    ``--test_only``. Nothing is stored."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from model.precision import PRECISIONS  # here, so that importing option stays light
    from model.variants import ABLATIONS

    p = ArgumentParser(
        description="Train CDSR / DASR / KDSR blind super-resolution (score checkpoints with test.py).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="set of defaults: 'demo' (short CPU run, the defaults shown here) or the "
                        "authors' recipe 'cdsr'/'dasr'/'kdsr-iso'/'kdsr-aniso'; default: demo "
                        "without --dir_data, otherwise the recipe of --model (KDSR: kdsr-aniso "
                        "with --blur_type aniso_gaussian, else kdsr-iso)")

    g = p.add_argument_group("hardware")
    g.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    g.add_argument("--n_GPUs", type=int, default=1,
                   help="GPUs for DataParallel in one process (CUDA only); for one process per "
                        "GPU launch with torchrun instead (see README, 'Several GPUs')")
    g.add_argument("--sync_bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch of all "
                        "processes (default: each process's own batch, as the authors)")
    g.add_argument("--precision", choices=PRECISIONS, default="tf32",
                   help="training arithmetic: fp32 (true float32), tf32 (PyTorch's default: "
                        "TF32 convolutions on Ampere+ GPUs), bf16 or fp16 (autocast; fp16 with a "
                        "gradient scaler); evaluation is always float32")
    g.add_argument("--n_threads", type=int, default=2, help="data-loading worker processes")
    g.add_argument("--seed", type=int, default=1, help="random seed (data, degradations, weights)")

    g = p.add_argument_group("data")
    g.add_argument("--dir_data", default=None,
                   help="root of the training/benchmark folders; without it the photos bundled "
                        "with scikit-image and matplotlib are used")
    g.add_argument("--data_train", default="DF2K",
                   help="training set(s) under --dir_data, '+'-separated (HR images in NAME/HR or NAME)")
    g.add_argument("--data_cache", default=None,
                   help="folder of the decoded store: each --data_train image is decoded once "
                        "into raw pixels there (3 bytes per pixel: about 29 GB for DF2K), built "
                        "on first use (or by scripts/prepare_data.py) and updated when an image "
                        "changes; training then reads patches without decoding. Without it every "
                        "image is decoded at each start and at every use")
    _add_benchmark_flags(g)
    g.add_argument("--scale", type=int, default=2, choices=(2, 3, 4), help="upscaling factor")
    g.add_argument("--patch_size", type=int, default=24, help="LR training patch size")
    g.add_argument("--batch_size", type=int, default=8, help="training images per batch")

    g = p.add_argument_group("degradation")
    _add_degradation_flags(g, "validation", "training: largest noise level (0..255 units, each "
                           "image draws one in [0, noise]); validation: the level used")
    g.add_argument("--sig_min", type=float, default=0.2,
                   help="training: smallest iso std-dev (aniso, manet convention: smallest variance)")
    g.add_argument("--sig_max", type=float, default=2.0,
                   help="training: largest iso std-dev (aniso, manet convention: largest variance)")
    g.add_argument("--lambda_min", type=float, default=0.2, help="training, dasr aniso: smallest std-dev")
    g.add_argument("--lambda_max", type=float, default=4.0, help="training, dasr aniso: largest std-dev")
    g.add_argument("--sv_mode", type=int, choices=(0,), action=_AcceptedOnly, default=argparse.SUPPRESS,
                   help="spatially variant training blur: only 0 (off) is implemented, accepted "
                        "so that the CDSR README's command runs; test sets with spatially variant "
                        "modes 1-6: scripts/make_testsets.py --sv_modes")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="CDSR",
                   help="network (case-insensitive): CDSR, DASR, a CDSR ablation cdsr-ABLATION "
                        "(see --ablation), KDSR-S-M / KDSR-S-L (a KDSR student: its teacher is "
                        "trained first, then distilled into it) or KDSR-T-M / KDSR-T-L (the "
                        "teacher alone); 'blindsr' is DASR, or KDSR beside one of KDSR's flags")
    g.add_argument("--ablation", choices=sorted(ABLATIONS), default=None,
                   help="with --model CDSR: train the ablation cdsr-ABLATION instead (the same "
                        "as --model cdsr-ABLATION; README, 'Ablations', says what each removes)")
    g.add_argument("--pre_train", default=None,
                   help="weights to start from (ours or the authors'); for a KDSR student a "
                        "distillation run's file, both networks (no teacher stage)")
    g.add_argument("--queue_size", type=int, default=8192, help="MoCo queue length (negatives)")
    _add_kdsr_width_flags(g, "KDSR: select the size M (64, 53, 9) or L (128, 28, 5) of --model")

    g = p.add_argument_group("training")
    g.add_argument("--epochs_encoder", type=int, default=1,
                   help="encoder pre-training epochs (contrastive loss only; KDSR: the student's "
                        "epochs on the distillation loss alone); <= 0 skips the phase")
    g.add_argument("--epochs_sr", type=int, default=4,
                   help="epochs after pre-training (joint + freeze; KDSR: distillation, L1 + "
                        "distillation loss)")
    g.add_argument("--freeze_epoch", type=int, default=5,
                   help="CDSR/DASR: first epoch with a frozen encoder (L1 only); beyond the last "
                        "epoch: never")
    _add_lr_schedule_flags(g, "encoder", "pre-training", lr=1e-3, step=60, gamma=0.1)
    _add_lr_schedule_flags(g, "sr", "joint/freeze", lr=5e-4, step=2, gamma=0.5)
    g.add_argument("--loss", default="1*L1", help="reconstruction loss, e.g. '1*L1' or '1*L1+0.5*MSE'")
    g.add_argument("--c_weight", type=float, default=1.0, help="weight of the contrastive loss")
    g.add_argument("--test_every", type=int, default=50, help="iterations per epoch")
    g.add_argument("--print_every", type=int, default=10, help="iterations between log lines")
    g.add_argument("--ema_decay", type=float, default=0.0,
                   help="also keep an exponential moving average of the weights, updated after "
                        "every step with this decay (BasicSR's usual 0.999 averages ~1000 steps: "
                        "for long runs), validated, kept in best.pt and scored by test.py; 0 = off")
    g.add_argument("--max_bad_steps", type=int, default=20,
                   help="a step whose loss or gradients are not finite is skipped; this many in "
                        "a row stop the run (the last checkpoint stays intact). fp16: the gradient "
                        "scaler's skips count once its scale is down to 1")

    g.add_argument("--test_only", action=_AcceptedSwitch,
                   help="score --pre_train (or --pre_train_ST, or --resume N) as test.py does "
                        "instead of training (EDSR's habit); the training flags are ignored")
    _add_kdsr_flags(p)

    g = p.add_argument_group("run folder")
    g.add_argument("--save", default="demo", help="run folder name under experiment/")
    g.add_argument("--resume", type=_resume_value, nargs="?", const=-1, default=0,
                   help="resume experiment/SAVE: -1 or no value = latest, N = epoch N "
                        "(needs --save_models), 0 = start fresh")
    g.add_argument("--auto_resume", action="store_true",
                   help="continue experiment/SAVE from checkpoint/last.pt when it exists and was "
                        "written with the same options, else start afresh: for a command that a "
                        "scheduler reruns (requeue); automatic when torchrun restarts the job")
    g.add_argument("--save_models", action="store_true", help="keep a checkpoint of every epoch")
    _add_switch(g, "--use_tb_logger", "write TensorBoard event files to experiment/SAVE/tensorboard/ "
                "(losses, lr, contrastive accuracy, timing, codebook usage, validation, crops); "
                "--use_tb_logger false: none", default=True)
    g.add_argument("--tb_image_every", type=int, default=10,
                   help="with --use_tb_logger: LR | SR | HR crops of the first validation images "
                        "every N epochs and after the last (0: never)")
    _add_inference_flags(p)
    return p


def _add_lr_schedule_flags(g, stage: str, what: str, lr: float, step: int, gamma: float) -> None:
    """--lr_STAGE, --lr_decay_STAGE, --gamma_STAGE: the learning rate of a stage's phases,
    multiplied by gamma every step epochs (the authors' step schedule)."""
    g.add_argument(f"--lr_{stage}", type=float, default=lr, help=f"{what} learning rate")
    g.add_argument(f"--lr_decay_{stage}", type=int, default=step, help=f"{what} lr step (epochs)")
    g.add_argument(f"--gamma_{stage}", type=float, default=gamma, help=f"{what} lr decay factor")


def _add_kdsr_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("KDSR (knowledge distillation; README, 'KDSR')")
    g.add_argument("--epochs_teacher", type=int, default=2,
                   help="teacher epochs (L1; the authors' stage 3): the whole run of --model "
                        "KDSR-T-*, the first stage of KDSR-S-*; none with --pre_train_TA")
    _add_lr_schedule_flags(g, "teacher", "teacher", lr=5e-4, step=2, gamma=0.5)
    g.add_argument("--temperature", type=float, default=0.15,
                   help="softmax temperature of the distillation loss (KL between the teacher's "
                        "and the student's degradation features)")
    g.add_argument("--kd_weight", type=float, default=1.0,
                   help="weight of the distillation loss (the authors': 1); 0 is the ablation "
                        "without distillation (the student learns from L1 alone)")
    g.add_argument("--pre_train_TA", default=None,
                   help="a trained teacher (ours, or the authors' model_TA_*.pt): a student's run "
                        "skips the teacher stage and distils it; a teacher's run starts from it")
    g.add_argument("--pre_train_ST", default=None,
                   help="the student's starting weights: a student file, or a teacher file whose "
                        "generator it takes (what the authors' stage-4 scripts pass); default: the "
                        "teacher's generator when distillation starts")
    g.add_argument("--st_save_epoch", type=int, default=None,
                   help="also keep checkpoint/epoch_<e>.pt as the authors' trainers keep "
                        "model_TA_<e>.pt / model_ST_<e>.pt: e > N or e a multiple of 20 (teacher) "
                        "/ 30 (student), e counted from the start of its stage")


def _add_kdsr_width_flags(g, help_prefix: str) -> None:
    for flag, meaning in (("n_feats", "generator width"), ("n_blocks", "generator blocks"),
                          ("n_resblocks", "encoder residual blocks")):
        g.add_argument(f"--{flag}", type=int, default=None, help=f"{help_prefix}: {meaning}")


def _add_benchmark_flags(g) -> None:
    g.add_argument("--data_test", default="Set5",
                   help="benchmark set(s), '+'-separated, looked up under --test_path")
    g.add_argument("--test_path", default=None,
                   help="root of the benchmark sets (default: DIR_DATA/benchmark, else a benchmark "
                        "folder one or two levels up, for --dir_data .../DF2K/HR); dataset D is "
                        "read from D/x<scale>, D/HR or D")


def _add_degradation_flags(g, use: str, noise_help: str) -> None:
    """The degradation convention and the fixed degradation of ``use`` (validation, test)."""
    g.add_argument("--degradation", choices=("dasr", "manet"), default="dasr",
                   help="degradation convention: 'manet' (the CDSR authors' training code, "
                        "main.py's preset cdsr: aniso variances and radians, top-left kernels, "
                        "decimation) or 'dasr' (std-devs and degrees, centred kernels, MATLAB bicubic)")
    g.add_argument("--blur_type", choices=("iso_gaussian", "aniso_gaussian"), default="iso_gaussian")
    g.add_argument("--blur_kernel", type=int, default=21, help="blur kernel size")
    g.add_argument("--sig", type=float, default=1.2, help=f"{use}: iso blur std-dev")
    g.add_argument("--lambda_1", type=float, default=0.2,
                   help=f"{use}, aniso: dasr std-dev along x / manet variance sig1")
    g.add_argument("--lambda_2", type=float, default=4.0,
                   help=f"{use}, aniso: dasr std-dev along y / manet variance sig2")
    g.add_argument("--theta", type=float, default=0.0,
                   help=f"{use}, aniso: angle (dasr: degrees, manet: radians)")
    g.add_argument("--noise", type=float, default=0.0, help=noise_help)
    g.add_argument("--sample_mode", choices=("bicubic", "s-fold"), default="bicubic",
                   help="downsampling, in the authors' names: dasr 'bicubic' = MATLAB bicubic, "
                        "'s-fold' = pixel 0 of each block; manet 'bicubic' = direct decimation")


def _add_inference_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference (validation, test.py)")
    g.add_argument("--self_ensemble", action="store_true", help="x8 flip/rotation ensemble")
    g.add_argument("--chop", action="store_true",
                   help="tiled inference for large images (embedding once, SR network per tile)")
    g.add_argument("--tile", type=int, default=128,
                   help="with --chop: LR tile side; only the SR network runs per tile")
    g.add_argument("--tile_overlap", type=int, default=32,
                   help="with --chop: LR pixels of context around each tile (DASR equals the "
                        "untiled output once this reaches its receptive radius, 109 at paper size)")
    g.add_argument("--embed_crop", type=int, default=512,
                   help="with --chop: the degradation embedding is estimated once, on the centred "
                        "square of this LR side (0 = the whole image), so memory stays bounded")
    g.add_argument("--tile_pooling", choices=("tile", "image"), default="tile",
                   help="with --chop, CDSR only: its DQA layers pool each feature map over "
                        "'tile' (bounded memory, output deviates from untiled) or 'image' (exact: "
                        "two passes per block keep the whole-image means; holds three 64-channel "
                        "LR-size feature maps)")


def build_test_parser() -> argparse.ArgumentParser:
    """test.py's flags, and only those: the model and scale come from the checkpoint."""
    from data.protocols import PROTOCOLS  # here, so that importing option stays light

    p = ArgumentParser(
        prog="test.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Score a checkpoint (ours or the authors') on benchmark sets under a fixed "
                    "degradation or every setting of a published protocol, or super-resolve "
                    "your own images.")
    g = p.add_argument_group("checkpoint and hardware")
    g.add_argument("--pre_train", "--pre_train_ST", dest="pre_train", default=None,
                   help="checkpoint: ours or the authors' state dict; the model and scale come from "
                        "it (--pre_train_ST: KDSR's name, in their test scripts)")
    g.add_argument("--resume", type=int, default=0, metavar="N",
                   help="instead of --pre_train, epoch N (-1: the latest; 0: off) of the training run "
                        "--save (default blindsr): ours, experiment/SAVE/checkpoint/epoch_N.pt "
                        "(last.pt), or DASR's, experiment/SAVE_x<scale>_<sample_mode>_<iso|aniso>/"
                        "model/model_N.pt (model_latest.pt)")
    g.add_argument("--model", default=None,
                   help="check that the checkpoint holds this model ('blindsr', the authors' name, "
                        "is DASR or KDSR); a KDSR distillation run's file holds the student, and "
                        "its teacher, scored with --model KDSR-T-M (-L)")
    _add_kdsr_width_flags(g, "check that the KDSR checkpoint has this")
    g.add_argument("--scale", type=int, default=None, choices=(2, 3, 4),
                   help="check that the checkpoint is for this scale")
    g.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    g.add_argument("--n_GPUs", type=int, default=1,
                   help="score on this many CUDA devices, one image per device (the CPU: one)")
    g.add_argument("--test_only", action=_AcceptedSwitch,
                   help="accepted for the authors' test.sh (test.py only tests)")
    g.add_argument("--no_ema", action="store_true",
                   help="score the trained weights of a checkpoint that also holds a moving "
                        "average of them (main.py --ema_decay), instead of the average")

    g = p.add_argument_group("benchmark sets")
    g.add_argument("--dir_data", default=None, help="where the default --test_path is found (see it)")
    _add_benchmark_flags(g)
    g.add_argument("--testsets", default=None,
                   help="with --protocol: read the LR from ROOT/<protocol>/<D>_x<scale>/ or "
                        "ROOT/<D>_x<scale>/ (make_testsets.py, MANet's prepare_testset.py, "
                        "CDSR's SRTestset)")

    g = p.add_argument_group("degradation (without --protocol: one fixed degradation)")
    _add_degradation_flags(g, "test", "test: noise level (0..255 units)")
    g.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="score every setting of a published protocol instead: cdsr (CDSR Table 2, "
                        "MANet's sets), dasr-iso / dasr-aniso (DASR Tables 2 / 3), gaussian8 "
                        "(IKC/DAN); noise seeded as scripts/make_testsets.py's default --seed 0")
    g.add_argument("--sv_mode", type=int, default=0, choices=range(7), metavar="{0..6}",
                   help="0: the spatially invariant settings; 1-6 (with --protocol cdsr): MANet's "
                        "spatially variant set of that mode instead (CDSR scores 1-5 on B100)")
    g.add_argument("--protocol_noise", type=float, default=None,
                   help="with --protocol: only this noise level (0..255 units); default: every "
                        "level the paper reports at the checkpoint's scale")

    g = p.add_argument_group("results")
    g.add_argument("--save", default=None,
                   help="tables go to experiment/SAVE/ (default test); with --resume SAVE names the "
                        "training run (default blindsr, as in DASR's code) and the tables go to "
                        "its folder's test/")
    _add_switch(g, "--save_results", "also write the SR images and figures (PSNR per setting; "
                                     "bicubic | SR | HR crops)")
    g.add_argument("--figure_images", default=None,
                   help="with --save_results: '+'-separated image names (file stems) for the "
                        "bicubic | SR | HR figures; default: each set's first image")

    g = p.add_argument_group("own images")
    g.add_argument("--input", default=None,
                   help="an LR image or a folder of them (any size; grayscale, RGBA, 16-bit) -> "
                        "OUTPUT/<name>.png, 8-bit, of the input's kind (RGBA: alpha bicubic-upscaled)")
    g.add_argument("--output", default=None, help="folder for the SR images of --input")
    g.add_argument("--bf16", action="store_true",
                   help="run --input under bfloat16 autocast: less memory, faster on GPUs with "
                        "bf16 units; outputs differ from float32 by a few grey levels (README, "
                        "'Own images'). Scores always use float32")
    _add_inference_flags(p)
    return p


def _parse_with_preset(parser: argparse.ArgumentParser, argv: Optional[List[str]]) -> argparse.Namespace:
    known, _ = parser.parse_known_args(argv)
    preset = known.preset
    if preset is None:
        model = authors_kdsr_model(argv, known) or known.model or "cdsr"
        preset = "demo" if known.dir_data is None else recipe_of(model, known.blur_type)
    parser.set_defaults(preset=preset, **PRESETS.get(preset, {}))
    args = parser.parse_args(argv)
    args.model = authors_kdsr_model(argv, args) or args.model
    return args


def recipe_of(model: str, blur_type: str) -> str:
    """The preset of ``model``'s authors' recipe: a CDSR variant trains with CDSR's, 'blindsr'
    with DASR's, KDSR with kdsr-aniso (anisotropic blur) or kdsr-iso."""
    from model.variants import family
    name = family(model)
    if name.startswith("kdsr-"):
        return "kdsr-aniso" if blur_type == "aniso_gaussian" else "kdsr-iso"
    return name


def authors_kdsr_model(argv: Optional[List[str]], args: argparse.Namespace) -> Optional[str]:
    """The KDSR model an authors' KDSR command means by ``--model blindsr``, or None: with one
    of ``KDSR_FLAGS`` on the command line, the student (their stage 4, which names a teacher
    with --pre_train_TA/--pre_train_ST) or else the teacher (stage 3), at the size the width
    flags select (M without them). ValueError for widths of no published size."""
    from model import AUTHORS_GENERIC_NAME
    from model.kdsr import kdsr_name
    if str(args.model).lower() != AUTHORS_GENERIC_NAME or not any(_given(argv, f) for f in KDSR_FLAGS):
        return None
    role = "s" if args.pre_train_TA or args.pre_train_ST else "t"
    return kdsr_name(role, kdsr_size_of_widths(args) or "m")


def kdsr_size_of_widths(args: argparse.Namespace) -> Optional[str]:
    """The KDSR size ('m' or 'l') that --n_feats/--n_blocks/--n_resblocks select (None when
    none is given); ValueError when they fit no published size."""
    from model.kdsr import SIZES
    given = given_widths(args)
    if not given:
        return None
    fits = [size for size, widths in SIZES.items() if all(getattr(widths, k) == v for k, v in given.items())]
    if not fits:
        published = "; ".join(f"{size.upper()}: " + " ".join(f"--{k} {getattr(w, k)}" for k in KDSR_WIDTHS)
                              for size, w in SIZES.items())
        raise ValueError(f"{widths_text(given)} is not a published KDSR size ({published})")
    return fits[0]


def given_widths(args: argparse.Namespace) -> Dict[str, int]:
    """The KDSR widths (--n_feats, --n_blocks, --n_resblocks) the command sets."""
    return {k: getattr(args, k) for k in KDSR_WIDTHS if getattr(args, k, None) is not None}


def widths_text(given: Dict[str, int]) -> str:
    """The widths as the flags that set them, e.g. '--n_feats 128 --n_blocks 28'."""
    return " ".join(f"--{k} {v}" for k, v in given.items())


def wants_test_only(argv: Optional[List[str]]) -> bool:
    """Whether main.py's command line asks to score instead of train (``--test_only``)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--test_only", action="store_true")
    return probe.parse_known_args(argv)[0].test_only


def test_command(argv: List[str]) -> Tuple[List[str], List[str]]:
    """main.py's command line as test.py's: (the arguments test.py takes, the training flags
    dropped from it, which test.py does not know)."""
    training = build_parser()._option_string_actions
    testing = build_test_parser()._option_string_actions
    kept: List[str] = []
    dropped: List[str] = []
    position = 0
    while position < len(argv):
        token = argv[position]
        position += 1
        flag = token.split("=", 1)[0]
        if not flag.startswith("--") or flag in testing or flag not in training:
            kept.append(token)                         # test.py says what it does not know
            continue
        dropped.append(flag)
        nargs = training[flag].nargs
        follows = argv[position] if position < len(argv) else None
        if "=" not in token and (nargs is None or (nargs == "?" and follows is not None
                                                   and not follows.startswith("-"))):
            position += 1                              # its value is the next token
    return kept, dropped


def _given(argv: Optional[List[str]], flag: str) -> bool:
    """Whether ``flag`` is on the command line (after presets, a default looks like a choice)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument(flag)
    return getattr(probe.parse_known_args(argv)[0], flag.lstrip("-")) is not None


def validate(args: argparse.Namespace) -> None:
    """Raise ValueError with one clear sentence for values that make no sense."""
    from model import canonical_name, has_moco_queue
    positive = ("patch_size", "batch_size", "test_every", "print_every", "queue_size",
                "lr_decay_encoder", "lr_decay_sr", "lr_decay_teacher", "n_GPUs", "max_bad_steps")
    for name in positive:
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ("lr_encoder", "lr_sr", "lr_teacher", "gamma_encoder", "gamma_sr", "gamma_teacher",
                 "temperature"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ("c_weight", "sig_min", "lambda_min", "kd_weight", "epochs_teacher", "tb_image_every"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not 0 <= args.ema_decay < 1:
        raise ValueError(f"--ema_decay must be in [0, 1) (0: no moving average; 0.999 is the usual "
                         f"choice for long runs), got {args.ema_decay}")
    if args.sig_min > args.sig_max:
        raise ValueError(f"--sig_min {args.sig_min} is larger than --sig_max {args.sig_max}")
    if args.lambda_min > args.lambda_max:
        raise ValueError(f"--lambda_min {args.lambda_min} is larger than --lambda_max {args.lambda_max}")
    _validate_evaluation(args)
    if args.n_threads < 0:
        raise ValueError(f"--n_threads must be >= 0, got {args.n_threads}")
    hr_patch = args.patch_size * args.scale
    if args.degradation == "dasr" and hr_patch <= args.blur_kernel // 2:
        raise ValueError(f"--patch_size {args.patch_size} makes {hr_patch}x{hr_patch} HR patches, too "
                         f"small for the {args.blur_kernel}x{args.blur_kernel} blur (the dasr "
                         f"convention reflects {args.blur_kernel // 2} pixels at each border); use "
                         f"--patch_size >= {args.blur_kernel // 2 // args.scale + 1}")
    if args.ablation and args.model is not None and canonical_name(args.model) != "cdsr":
        raise ValueError(f"--ablation {args.ablation} removes a part of CDSR; it needs --model "
                         f"CDSR, got --model {args.model}")
    if args.sync_bn and args.n_GPUs > 1:
        raise ValueError(f"--sync_bn synchronises BatchNorm over torchrun's processes, not over "
                         f"DataParallel's --n_GPUs {args.n_GPUs}, where each GPU would still "
                         f"normalise its own share: launch torchrun --nproc_per_node "
                         f"{args.n_GPUs} main.py ... --sync_bn (without --n_GPUs)")
    if has_moco_queue(_model_name(args)) and args.queue_size % args.batch_size:
        raise ValueError(f"--queue_size {args.queue_size} is not a multiple of --batch_size "
                         f"{args.batch_size}; MoCo enqueues the keys of a whole batch per step")
    _validate_kdsr(args)
    _validate_schedule(args)
    _validate_model_input(args)
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if "RANK" in os.environ else 1   # torchrun's
    if args.batch_size % world_size:
        raise ValueError(f"--batch_size {args.batch_size} (the global batch) is not divisible by "
                         f"the {world_size} processes; choose a multiple of {world_size}")


def _model_name(args: argparse.Namespace) -> str:
    """The registry name of --model (with --ablation)."""
    from model import canonical_name
    return canonical_name(f"{args.model}-{args.ablation}" if args.ablation else args.model)


def _validate_kdsr(args: argparse.Namespace) -> None:
    """KDSR's flags against --model: widths of its size, a teacher to distil, something to train."""
    from model.kdsr import kdsr_name, kdsr_role_and_size
    name = _model_name(args)
    kdsr = kdsr_role_and_size(name)
    widths = given_widths(args)
    if kdsr is None:
        for flag in ("pre_train_TA", "pre_train_ST", "st_save_epoch"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} is KDSR's; --model {args.model} is not a KDSR model")
        if widths:
            raise ValueError(f"{widths_text(widths)} select a KDSR size; --model {args.model} "
                             "is not a KDSR model")
        return
    role, size = kdsr
    selected = kdsr_size_of_widths(args)
    if selected not in (None, size):
        raise ValueError(f"the widths {widths_text(widths)} are KDSR's {selected.upper()} size, but --model "
                         f"{args.model} is its {size.upper()} size: use --model "
                         f"{kdsr_name(role, selected).upper()}")
    if args.st_save_epoch is not None and args.st_save_epoch < 0:
        raise ValueError(f"--st_save_epoch must be >= 0, got {args.st_save_epoch}")
    if role == "t":
        if args.pre_train_ST:
            raise ValueError(f"--pre_train_ST starts a student; --model {args.model} trains the "
                             "teacher (its starting weights: --pre_train_TA)")
        if args.epochs_teacher == 0:
            raise ValueError(f"nothing to train: --epochs_teacher 0 with the teacher --model {args.model}")
        return
    n_encoder = max(args.epochs_encoder, 0)
    if args.epochs_sr < 0:
        raise ValueError(f"--epochs_sr must be >= 0, got {args.epochs_sr}")
    if args.pre_train and (args.pre_train_TA or args.pre_train_ST):
        raise ValueError("--pre_train gives a distillation run's teacher and student together; "
                         "use it or --pre_train_TA/--pre_train_ST")
    if not (args.pre_train_TA or args.pre_train or args.epochs_teacher):
        raise ValueError(f"--epochs_teacher 0: {args.model} would distil an untrained teacher; "
                         "train it here (--epochs_teacher N) or give a trained one (--pre_train_TA)")
    if n_encoder and args.kd_weight == 0:
        raise ValueError(f"--kd_weight 0 leaves the {n_encoder} distillation-encoder epochs "
                         "(--epochs_encoder) nothing to train: pass --epochs_encoder 0")
    from model.training import kdsr_phases
    if not kdsr_phases(args, student=True):
        raise ValueError("nothing to train: no teacher stage (a teacher was given), "
                         "--epochs_encoder and --epochs_sr 0")


def _validate_schedule(args: argparse.Namespace) -> None:
    """--epochs_encoder, --epochs_sr and --freeze_epoch make phases (``model.training.build_phases``;
    KDSR's are checked by ``_validate_kdsr``)."""
    from model.kdsr import kdsr_role_and_size
    if kdsr_role_and_size(_model_name(args)) is not None:
        return
    n_encoder = max(args.epochs_encoder, 0)
    if args.epochs_sr < 0:
        raise ValueError(f"--epochs_sr must be >= 0, got {args.epochs_sr}")
    if n_encoder + args.epochs_sr == 0:
        raise ValueError("nothing to train: --epochs_encoder and --epochs_sr are both 0")
    if args.epochs_sr > 0 and args.freeze_epoch <= n_encoder:
        raise ValueError(f"--freeze_epoch {args.freeze_epoch} falls inside encoder pre-training "
                         f"(epochs 1..{n_encoder}); it must be > {n_encoder}")


def _validate_model_input(args: argparse.Namespace) -> None:
    """--patch_size against the smallest LR the encoder of --model (--ablation) reads."""
    from model import canonical_name, input_requirement
    name = canonical_name(f"{args.model}-{args.ablation}" if args.ablation else args.model)
    least, reason = input_requirement(name)
    if args.patch_size < least:
        raise ValueError(f"--patch_size {args.patch_size} is too small for {name.upper()}: its "
                         f"encoder needs LR patches of at least {least}x{least}{reason}")


def _validate_evaluation(args: argparse.Namespace) -> None:
    """The fixed degradation and inference flags of main.py and test.py."""
    for flag, value, least in (("--noise", args.noise, 0), ("--sig", args.sig, 0),
                               ("--blur_kernel", args.blur_kernel, 1), ("--tile", args.tile, 1),
                               ("--tile_overlap", args.tile_overlap, 0),
                               ("--embed_crop", args.embed_crop, 0)):
        if value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    if args.blur_kernel % 2 == 0:
        raise ValueError(f"--blur_kernel must be odd, got {args.blur_kernel}")


def validate_test(args: argparse.Namespace) -> None:
    """ValueError for test.py options that are out of range or contradict each other."""
    _validate_evaluation(args)
    if (args.pre_train is None) == (args.resume == 0):
        raise ValueError("say which checkpoint to score: --pre_train CKPT, or --resume N for "
                         "epoch N of a training run (-1: its latest)" if args.pre_train is None else
                         "--pre_train and --resume both name a checkpoint: use one")
    if args.resume < -1:
        raise ValueError(f"--resume must be an epoch number or -1 (the latest), got {args.resume}")
    if args.n_GPUs < 1:
        raise ValueError(f"--n_GPUs must be positive, got {args.n_GPUs}")
    if args.sv_mode and args.protocol != "cdsr":
        raise ValueError(f"--sv_mode {args.sv_mode} scores MANet's spatially variant sets: it needs "
                         "--protocol cdsr (a fixed degradation is spatially invariant, --sv_mode 0)")
    if args.input and not args.output:
        raise ValueError("--input needs --output, the folder for the SR images")
    if args.bf16 and not args.input:
        raise ValueError("--bf16 is for --input only: benchmark scores are computed in float32")
    if args.input and args.protocol:
        raise ValueError("--input super-resolves your images; --protocol scores benchmark sets: use one")
    if not args.protocol:
        for flag, value in (("--protocol_noise", args.protocol_noise), ("--testsets", args.testsets)):
            if value is not None:
                raise ValueError(f"{flag} needs --protocol")
    elif args.noise:
        raise ValueError("--noise sets the single fixed test degradation; with --protocol use "
                         "--protocol_noise")
    if args.protocol_noise is not None and args.protocol_noise < 0:
        raise ValueError(f"--protocol_noise must be >= 0, got {args.protocol_noise}")
    if args.figure_images and not args.save_results:
        raise ValueError("--figure_images needs --save_results (figures are drawn from the saved SR images)")


def parse_args(argv: Optional[List[str]] = None, *, test: bool = False) -> argparse.Namespace:
    """Parsed, validated options of main.py (or, with ``test=True``, of test.py)."""
    parser = build_test_parser() if test else build_parser()
    try:
        args = parser.parse_args(argv) if test else _parse_with_preset(parser, argv)
        (validate_test if test else validate)(args)
        roots = (args.dir_data, args.test_path) + ((args.testsets,) if test else ())
        if roots == (None,) * len(roots) and _given(argv, "--data_test"):
            raise ValueError(f"--data_test {args.data_test}: say where its images are with "
                             "--test_path ROOT (or --dir_data); without either, evaluation uses "
                             "the held-out sample photos")
    except ValueError as error:
        parser.error(str(error))
    return args
