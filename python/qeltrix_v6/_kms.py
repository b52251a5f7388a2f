"""KMS envelopes (docs/FORMAT.md section 3.1, kind 6): the MK wrapped by a cloud KMS key.

The MK is sent to the AWS KMS ``Encrypt`` API (``boto3``; any KMS-compatible endpoint works
with ``endpoint_url``) with the encryption context ``{"qeltrix-v6-container-id": HEX}``; the
returned ciphertext blob and the key's ARN are stored in the stanza. A reader calls ``Decrypt``
with the same context and key id. Whoever may call ``kms:Decrypt`` on that key (the *KMS
principal*) can open the container; the key material never leaves the KMS.

Every call is bounded: connect and read timeouts of ``timeout`` seconds and at most
``max_attempts`` attempts, so an unreachable KMS is a clear error, not a hang.

Readers run in *strict mode*: they call ``Decrypt`` only for the key ARNs they were given
(``key_ids``; CLI ``--kms-key-id``), never for whatever key a stanza names, because the stanza
is unauthenticated until the MK is known and a forged one would make the reader call (and sign
a request to) an attacker's key. *Discovery mode* (``discovery=True``; ``--kms-discovery``)
calls the key each stanza names, as the AWS Encryption SDK's discovery mode does; it is an
explicit opt-in.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

from . import _core
from .errors import QeltrixError, QeltrixIOError, WrongKeyError

KIND_KMS: int = _core.KIND_KMS
CONTEXT_KEY = "qeltrix-v6-container-id"
ENDPOINT_ENV = "QELTRIX_KMS_ENDPOINT"


class KmsUnavailableError(QeltrixIOError):
    """The KMS could not be reached, or did not answer within the timeout."""


class KmsError(QeltrixError):
    """The KMS refused a request (no credentials, no such key, not allowed, ...)."""


@dataclass(frozen=True)
class KmsConfig:
    """Where and how to reach the KMS.

    ``endpoint_url`` defaults to ``$QELTRIX_KMS_ENDPOINT``, then to AWS's regional endpoint;
    ``region`` to ``$AWS_REGION``/``$AWS_DEFAULT_REGION``, then ``us-east-1``. Credentials come
    from the usual AWS sources (environment, profile, instance role).

    ``key_ids`` are the KMS keys a reader may call (strict mode: full key ARNs, or key ids and
    aliases that match the end of a stanza's ARN); ``discovery=True`` lets it call any key a
    stanza names. Writers ignore both.
    """

    endpoint_url: str | None = None
    region: str | None = None
    timeout: float = 10.0
    max_attempts: int = 2
    key_ids: tuple[str, ...] = ()
    discovery: bool = False

    def allows(self, key_arn: str) -> bool:
        """Whether a reader in this configuration may call ``Decrypt`` with ``key_arn``."""
        if self.discovery:
            return True
        return any(key_arn == k or key_arn.endswith((f":key/{k}", f":{k}")) for k in self.key_ids)

    def client(self) -> Any:
        try:
            import boto3  # type: ignore[import-untyped,unused-ignore]
            from botocore.config import Config  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise KmsError("KMS recipients need boto3: pip install 'qeltrix-v6[kms]'") from None
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        cfg = Config(
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
        )
        endpoint = self.endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        return boto3.client("kms", region_name=region, endpoint_url=endpoint, config=cfg)

    def where(self) -> str:
        return self.endpoint_url or os.environ.get(ENDPOINT_ENV) or "the AWS KMS endpoint"


def config_or_default(kms: object) -> KmsConfig:
    if kms is None or kms is True:
        return KmsConfig()
    if isinstance(kms, KmsConfig):
        return kms
    raise TypeError(f"kms must be a KmsConfig, not {type(kms).__name__}")


def _context(container_id: bytes) -> dict[str, str]:
    return {CONTEXT_KEY: container_id.hex()}


def _call(cfg: KmsConfig, op: str, **kwargs: Any) -> dict[str, Any]:
    from botocore.exceptions import (  # type: ignore[import-untyped,unused-ignore]
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    try:
        result: dict[str, Any] = getattr(cfg.client(), op)(**kwargs)
        return result
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as e:
        raise KmsUnavailableError(f"KMS unreachable at {cfg.where()}: {e}") from None
    except NoCredentialsError:
        raise KmsError("no AWS credentials for the KMS (set AWS_ACCESS_KEY_ID/AWS_PROFILE or use a role)") from None
    except ClientError as e:
        err = e.response.get("Error", {})
        code, msg = err.get("Code", "error"), err.get("Message", "")
        if op == "decrypt" and code in ("AccessDeniedException", "InvalidCiphertextException", "IncorrectKeyException"):
            raise WrongKeyError(f"the KMS refused to unwrap the master key: {code}: {msg}") from None
        raise KmsError(f"KMS {op} failed: {code}: {msg}") from None
    except BotoCoreError as e:
        raise KmsUnavailableError(f"KMS request failed at {cfg.where()}: {e}") from None


def kms_stanza(cfg: KmsConfig, key_id: str, mk: bytes, container_id: bytes) -> tuple[int, bytes]:
    """A ``kms`` stanza: ``key_id_len u16 || key_arn || blob_len u16 || ciphertext_blob``."""
    resp = _call(cfg, "encrypt", KeyId=key_id, Plaintext=mk, EncryptionContext=_context(container_id))
    arn = str(resp.get("KeyId") or key_id).encode("utf-8")
    blob = bytes(resp["CiphertextBlob"])
    if len(arn) > 2048 or len(blob) > 2048:
        raise KmsError("the KMS returned a key id or ciphertext too long for a stanza")
    return KIND_KMS, struct.pack("<H", len(arn)) + arn + struct.pack("<H", len(blob)) + blob


def kms_unwrap(cfg: KmsConfig, key_id: str, blob: bytes, container_id: bytes) -> bytes | None:
    """The MK from a ``kms`` stanza (raises :class:`WrongKeyError` if the KMS refuses)."""
    resp = _call(cfg, "decrypt", CiphertextBlob=blob, KeyId=key_id, EncryptionContext=_context(container_id))
    mk = bytes(resp.get("Plaintext", b""))
    return mk if len(mk) == _core.MK_LEN else None


__all__ = ["KmsConfig", "KmsError", "KmsUnavailableError"]
