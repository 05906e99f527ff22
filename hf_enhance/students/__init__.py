"""Students: built from their teacher's own weights (depth and width pruning by measured importance), or small
recurrent ones (`GRUClassifier`) for distilling transformer classifiers."""

from hf_enhance.students.build import LAYER_STRATEGIES, RECORD_KEY, student_from_teacher
from hf_enhance.students.calibration import CalibrationData
from hf_enhance.students.gru import GRUClassifier
from hf_enhance.students.importance import Importance
from hf_enhance.students.layouts import BLOCK_LAYOUTS, BlockLayout, register_student_layout

__all__ = [
    "BLOCK_LAYOUTS",
    "LAYER_STRATEGIES",
    "RECORD_KEY",
    "BlockLayout",
    "CalibrationData",
    "GRUClassifier",
    "Importance",
    "register_student_layout",
    "student_from_teacher",
]
