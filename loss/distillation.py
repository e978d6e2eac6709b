"""KDSR's distillation loss between the degradation features of a student and its teacher."""
import torch
import torch.nn.functional as F


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), summed over the features and averaged
    over the batch (``F.kl_div(..., reduction='batchmean')``), with no T^2 factor: the
    authors' stage-4 term (trainer_*_stage4.py), their default T = 0.15.

    student, teacher: (B,D) features (the encoders' ``kd_features``); the teacher is detached.
    Returns a scalar, >= 0, computed in float32 at least.
    """
    if temperature <= 0:
        raise ValueError(f"the distillation temperature must be > 0, got {temperature}")
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(f"student and teacher features must both be (B,D), got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    dtype = torch.promote_types(student.dtype, torch.float32)
    log_p_student = F.log_softmax(student.to(dtype) / temperature, dim=1)
    p_teacher = F.softmax(teacher.detach().to(dtype) / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean")
