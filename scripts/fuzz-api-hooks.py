# schemathesis hooks for scripts/fuzz-api.
#
# Each exclusion drops exactly one known finding that another change fixes; remove it
# with that fix (the run then checks it again).
import schemathesis
from schemathesis.core.failures import AcceptedNegativeData


@schemathesis.hook
def filter_failure(context, failure, case, response):
    # The review item "JSON arrays as bodies" (HTTP edge, fixed on another branch): a JSON array
    # is read as a struct whose fields all have defaults, so `[]` is accepted as
    # `{}` (POST /v1/sites/{id}/labels, /v1/enrollment-tokens, the optional reasons).
    # Keep every other schema-violating request that is accepted a failure.
    if isinstance(failure, AcceptedNegativeData) and isinstance(case.body, list):
        return False
    return True
