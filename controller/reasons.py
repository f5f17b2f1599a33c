"""The closed set of reasons: every condition, decision, verdict and alert names one of these.

One enum for the whole controller so that a log reader, an alert receiver and the ledger see the
same vocabulary, and a typo is a type error instead of a new, silent reason.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    # adoption
    ADOPTED = "Adopted"
    ADOPTION_PENDING = "AdoptionPending"
    ADOPTION_OVERDUE = "AdoptionOverdue"
    FORCING_ADOPTION = "ForcingAdoption"
    AWAITING_VERIFICATION = "AwaitingVerification"
    RESTORING_VERSIONLESS = "RestoringVersionless"
    # pinning
    VERSIONLESS = "Versionless"
    PINNED_TO_TARGET = "PinnedToTarget"
    PINNED_TO_OLD_VERSION = "PinnedToOldVersion"
    UPDATING_PINNED_VERSION = "UpdatingPinnedVersion"
    # access
    ACCESS_GRANTED = "AccessGranted"
    IDENTITY_LACKS_ACCESS = "IdentityLacksAccess"
    ACCESS_NOT_EVALUATED = "AccessNotEvaluated"
    # key and target
    VAULT_UNREACHABLE = "VaultUnreachable"
    NO_USABLE_VERSION = "NoUsableVersion"
    TARGET_VERSION_DISABLED = "TargetVersionDisabled"
    TARGET_VERSION_NOT_YET_VALID = "TargetVersionNotYetValid"
    TARGET_VERSION_EXPIRED = "TargetVersionExpired"
    TARGET_VERSION_UNKNOWN = "TargetVersionUnknown"
    CONSUMER_AHEAD_OF_TARGET = "ConsumerAheadOfTarget"
    CONSUMER_VERSION_UNKNOWN = "ConsumerVersionUnknown"
    # version attributes
    VERSION_USABLE = "VersionUsable"
    VERSION_DISABLED = "VersionDisabled"
    VERSION_NOT_YET_VALID = "VersionNotYetValid"
    VERSION_EXPIRED = "VersionExpired"
    # retirement
    IN_USE = "InUse"
    BLOBS_STILL_WRAPPED = "BlobsStillWrapped"
    RECENT_UNWRAP = "RecentUnwrap"
    CURRENT_VERSION = "CurrentVersion"
    INSIDE_ADOPTION_WINDOW = "InsideAdoptionWindow"
    ALREADY_DISABLED = "AlreadyDisabled"
    NOT_IN_USE = "NotInUse"
    # executing a plan
    #: A write to the consumer failed for good (permission, not found, bad request).
    UPDATE_FAILED = "UpdateFailed"
    #: A write to the consumer failed transiently (throttling, a 5xx, a dropped connection): it is retried
    #: through the work queue with back-off; an alert once the retries are spent.
    UPDATE_RETRYING = "UpdateRetrying"
    #: The consumer changed between our read and our write (someone else's configuration wins).
    CONSUMER_CHANGED = "ConsumerChanged"
    # key events
    KEY_NEAR_EXPIRY = "KeyNearExpiry"
    KEY_EXPIRED = "KeyExpired"
    #: A key event could not be handled and retrying cannot help (e.g. the key was deleted).
    EVENT_FAILED = "EventFailed"
    # client-side encryption re-wrap
    REWRAP_INCOMPLETE = "RewrapIncomplete"
    REWRAP_TARGETS_INVALID = "RewrapTargetsInvalid"
    # work queue
    WORK_ITEM_POISONED = "WorkItemPoisoned"
    # compliance sweep
    #: A compliance rule (RULES.md CMK-001..020) fails on a resource.
    COMPLIANCE_FINDING = "ComplianceFinding"
    #: A compliance rule could not be evaluated on a resource (CMK-000: something could not be read).
    COMPLIANCE_NOT_EVALUATED = "ComplianceNotEvaluated"
    # compliance findings: the "reason" a rule records in a finding's evidence (controller/compliance/rules)
    # CMK-000
    NOT_READ = "NotRead"
    KEY_URI_INVALID = "KeyUriInvalid"
    IDENTITY_PRINCIPAL_UNKNOWN = "IdentityPrincipalUnknown"
    CURRENT_VERSION_UNKNOWN = "CurrentVersionUnknown"
    VERSION_NOT_LISTED = "VersionNotListed"
    DURATION_INVALID = "DurationInvalid"
    # accounts and scopes
    NOT_CMK = "NotCustomerManaged"
    USER_ASSIGNED_NOT_ATTACHED = "UserAssignedIdentityNotAttached"
    SYSTEM_ASSIGNED_OFF = "SystemAssignedIdentityOff"
    REGION_MISMATCH = "RegionMismatch"
    PINNED_VERSION = "PinnedVersion"
    SERVICE_KEY_FOR_QUEUE_OR_TABLE = "ServiceKeyForQueueOrTable"
    GEO_REDUNDANT = "GeoRedundant"
    SCOPE_SOURCE_NOT_KEY_VAULT = "ScopeSourceNotKeyVault"
    SCOPE_DISABLED = "ScopeDisabled"
    # vaults
    SOFT_DELETE_OFF = "SoftDeleteOff"
    RETENTION_OUT_OF_RANGE = "RetentionOutOfRange"
    PURGE_PROTECTION_OFF = "PurgeProtectionOff"
    FIREWALL_BLOCKS_STORAGE = "FirewallBlocksStorage"
    NO_AUDIT_DIAGNOSTICS = "NoAuditDiagnostics"
    KEY_OPERATIONS_FAILED = "KeyOperationsFailed"
    # keys
    UNSUPPORTED_KEY_TYPE = "UnsupportedKeyType"
    UNSUPPORTED_KEY_SIZE = "UnsupportedKeySize"
    KEY_SIZE_BELOW_MINIMUM = "KeySizeBelowMinimum"
    VERSION_EXPIRES_SOON = "VersionExpiresSoon"
    NO_TIMELY_ROTATION = "NoTimelyRotation"
    KEY_SOFT_DELETED = "KeySoftDeleted"
    #: The audit log shows a KeyPurge of a key in use: it cannot be recovered (the audit timer's alerts).
    KEY_PURGED = "KeyPurged"
    KEY_MISSING = "KeyMissing"
    VAULT_SOFT_DELETED = "VaultSoftDeleted"
    VAULT_MISSING = "VaultMissing"
    KEY_SHARED_ACROSS_SUBSCRIPTIONS = "KeySharedAcrossSubscriptions"
    KEY_SHARED_ACROSS_TENANTS = "KeySharedAcrossTenants"
    KEY_SHARED_BY_TOO_MANY_ACCOUNTS = "KeySharedByTooManyAccounts"
    # data
    BLOBS_WRAPPED_BY_OLD_VERSION = "BlobsWrappedByOldVersion"
