"""SDN's outputs for a batch of faces and keys, as every evaluation reads them.

One function for the trainer's held-out figures (heldout.py), the sample grids and the
independent evaluation (evaluate.py), so all of them judge the same images.
"""

from sdn_jax import keys
from sdn_jax.models.sdn import apply

OUTPUTS = ("anonymized", "recovered", "recovered_wrong_password", "recovered_wrong_attributes")
# Which way each output should go for the user: recognised (True) or not (False).
SHOULD_MATCH = {
    "original": True,
    "anonymized": False,
    "recovered": True,
    "recovered_wrong_password": False,
    "recovered_wrong_attributes": False,
}


def make_outputs_fn(networks: dict):
    """jit-able (params, images, key) -> dict of OUTPUTS.

    key: per-row "password", "attributes", "wrong_password", "wrong_attributes", and
    optionally "password2" (then "anonymized2": the same face under a second password).
    """

    def outputs(params, images, key):
        encoder, decoder = networks["encoder"], networks["decoder"]

        def decode(latent, direction, password, attributes, inputs):
            condition = keys.condition_vector(direction, password, attributes)
            return apply(decoder, params["decoder"], latent, condition, inputs)

        p, a = key["password"], key["attributes"]
        latent = apply(encoder, params["encoder"], images)
        anonymized = decode(latent, keys.ANONYMIZE, p, a, images)
        latent_a = apply(encoder, params["encoder"], anonymized)
        result = dict(
            anonymized=anonymized,
            recovered=decode(latent_a, keys.RECOVER, p, a, anonymized),
            recovered_wrong_password=decode(
                latent_a, keys.RECOVER, key["wrong_password"], a, anonymized
            ),
            recovered_wrong_attributes=decode(
                latent_a, keys.RECOVER, p, key["wrong_attributes"], anonymized
            ),
        )
        if "password2" in key:
            result["anonymized2"] = decode(latent, keys.ANONYMIZE, key["password2"], a, images)
        return result

    return outputs
