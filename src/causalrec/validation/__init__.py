"""Great Expectations suites for every table of the data contract."""
from causalrec.validation.suites import ValidationFailed, validate_data, validate_feedback

__all__ = ["ValidationFailed", "validate_data", "validate_feedback"]
