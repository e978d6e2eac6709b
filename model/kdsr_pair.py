"""KDSR's distillation run as one module: the teacher and the student it trains.

``make_model`` builds this pair for a student (``--model KDSR-S-M``): one run trains the
teacher (the authors' stage 3), then distils it into the student (their stage 4). The phases
(``model/training.py``) say which of the two trains; the pair only holds them and runs the
forward each phase needs:

    pair(lr)                     the student's SR (B,3,s*h,s*w): the evaluation forward
    pair(lr, hr)                 the teacher's SR, its encoder reading the HR (teacher stage)
    pair(lr, hr, distill=True)   {'sr' (unless with_sr=False), 'kd_features' (B,4C): the
                                  student's, 'teacher_kd_features' (B,4C): the frozen
                                  teacher's on the same LR and its HR, without gradient}

Images in 0..255 (lr (B,3,h,w), hr (B,3,s*h,s*w)). ``name``, ``scale`` and ``hparams`` are the
student's: the pair's checkpoints are the student's (``model.checkpoint.model_fields``, the
teacher in a field of its own), so test.py scores the student of a run.
"""
import torch
from torch import nn

from .kdsr import KDSRStudent, KDSRTeacher


class KDSRDistillation(nn.Module):
    """A KDSR teacher and the student of the same size and scale that distillation trains."""

    rgb_range = 1           # the authors' losses read [0,1] images (their --rgb_range 1)
    needs_hr = False        # its evaluation forward is the student's
    distills = True         # its criterion adds the distillation term

    def __init__(self, teacher: KDSRTeacher, student: KDSRStudent) -> None:
        super().__init__()
        if (teacher.size, teacher.scale) != (student.size, student.scale):
            raise ValueError(f"teacher {teacher.name.upper()} x{teacher.scale} and student "
                             f"{student.name.upper()} x{student.scale} differ in size or scale")
        self.teacher = teacher
        self.student = student
        self.name = student.name
        self.scale = student.scale

    @property
    def hparams(self) -> dict:
        return self.student.hparams

    def init_student_from_teacher(self) -> None:
        """The student's generator := the teacher's (the authors' stage 4 loads the teacher's
        file into the student with strict=False: only G.* matches; E_st keeps its own init)."""
        self.student.generator.load_state_dict(self.teacher.generator.state_dict())

    def forward(self, lr: torch.Tensor, hr: torch.Tensor | None = None, *, distill: bool = False,
                with_sr: bool = True) -> torch.Tensor | dict[str, torch.Tensor]:
        """See the module docstring."""
        if not distill:
            return self.student(lr) if hr is None else self.teacher(lr, hr)
        if hr is None:
            raise ValueError("distillation needs the HR: the teacher's encoder reads it")
        with torch.no_grad():
            _, teacher_features = self.teacher.encode(lr, hr)
        out = self.student(lr, features=True, with_sr=with_sr)
        return {**{k: v for k, v in out.items() if k != "embedding"},
                "teacher_kd_features": teacher_features.detach()}
