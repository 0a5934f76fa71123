//! [`Room`]: one member's view of an MLS group, driven by bytes in and bytes out.
//!
//! # Call order
//! The relay delivers a room's handshake and application messages in one
//! total order. A client feeds every message it receives, in that order, to
//! [`Room::process`], and **syncs (processes everything pending) before it
//! sends** — a commit or an application message built on a stale epoch is
//! either rejected by the others or unreadable to them. Operations that
//! produce a commit ([`Room::add_member`], [`Room::remove`],
//! [`Room::commit_pending`], [`Room::self_update`]) apply it locally at once
//! (optimistic merge); the relay must accept at most one commit per epoch and
//! refuse the others, whose senders then resync from the winning commit.

use std::collections::BTreeSet;
use std::fmt;

use openmls::prelude::{
    Extensions, GroupId, KeyPackageBundle, KeyPackageIn, KeyPackageRef, LeafNodeIndex, LeafNodeParameters,
    MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
    ProcessedMessageContent, ProtocolMessage, ProtocolVersion, Sender, StagedWelcome, Welcome,
};
use openmls_traits::OpenMlsProvider;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::storage::StorageProvider as _;
use tls_codec::{Deserialize as _, Serialize as _};
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::error::{RoomError, malformed, mls_err};
use crate::identity::{Member, MlsSigner, UserId, capabilities, credential_with_key};
use crate::metadata::{RoomAccessKey, RoomMetadata, open_group_info, seal_group_info, validate_room_name};
use crate::provider::RoomProvider;
use crate::suite::{CIPHERSUITE, RoomSuite};

/// How many past epochs' application secrets a member keeps, so a message
/// sent just before a commit (and ordered after it by the relay) can still be
/// read. Kept small: past-epoch keys weaken forward secrecy.
pub const MAX_PAST_EPOCHS: usize = 2;

const ROOM_STATE_MAGIC: &[u8; 4] = b"PQRM";
const ROOM_STATE_VERSION: u16 = 2;

/// The opaque room identifier the relay routes by (the MLS group id, 16
/// random bytes). It reveals nothing about the room's name or members.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(Vec<u8>);

impl RoomId {
    /// Wraps raw id bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
    /// The raw id bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// What processing one incoming message produced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// An application message from a member.
    Message {
        /// Who sent it (authenticated by the sender's MLS signature key).
        sender: UserId,
        /// The decrypted content.
        plaintext: Vec<u8>,
    },
    /// A member joined (by Welcome or by external commit).
    MemberJoined(UserId),
    /// A member left or was removed.
    MemberLeft(UserId),
    /// A member joined again from the same identity by external commit (a
    /// resync after it fell behind): the same people are in the room, but
    /// room messages sent before it came back may not have reached it.
    MemberRejoined(UserId),
    /// A commit moved the room to a new epoch.
    EpochChanged {
        /// The new epoch.
        epoch: u64,
    },
    /// A proposal (e.g. a member's leave request) was queued; the next active
    /// member should call [`Room::commit_pending`].
    ProposalQueued {
        /// Who proposed.
        by: UserId,
    },
    /// This client was removed from the room; the room can no longer be used.
    Removed,
}

/// One member's state of a room. See the module docs for the call order.
pub struct Room {
    id: RoomId,
    user: UserId,
    signer: MlsSigner,
    provider: RoomProvider,
    group: MlsGroup,
    meta: RoomMetadata,
}

impl fmt::Debug for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Room")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

fn encode(msg: &MlsMessageOut) -> Result<Vec<u8>, RoomError> {
    msg.tls_serialize_detached().map_err(mls_err("encode message"))
}

fn decode(bytes: &[u8]) -> Result<MlsMessageBodyIn, RoomError> {
    Ok(MlsMessageIn::tls_deserialize_exact(bytes).map_err(malformed("MLS message"))?.extract())
}

impl Member {
    /// Creates a room owned by this member: see [`Room::create`].
    pub fn create_room(&self, name: &str, max_participants: u32) -> Result<Room, RoomError> {
        Room::create(self, name, max_participants)
    }
}

impl Room {
    /// Creates a room with `member` as its only participant. The name, the
    /// limit, the cipher suite and a fresh [`RoomAccessKey`] go into the
    /// encrypted group state; the relay only ever sees [`Room::id`].
    pub fn create(member: &Member, name: &str, max_participants: u32) -> Result<Self, RoomError> {
        let provider = RoomProvider::new()?;
        let id: [u8; 16] = provider.rand().random_array().map_err(mls_err("random"))?;
        let access_key: [u8; 32] = provider.rand().random_array().map_err(mls_err("random"))?;
        Self::create_with(member, name, max_participants, id, RoomAccessKey::from_bytes(access_key))
    }

    /// As [`Room::create`], with the room id and access key chosen by the
    /// caller (e.g. both derived from a room name that acts as an invitation).
    pub fn create_with(
        member: &Member,
        name: &str,
        max_participants: u32,
        id: [u8; 16],
        access_key: RoomAccessKey,
    ) -> Result<Self, RoomError> {
        validate_room_name(name)?;
        if max_participants == 0 {
            return Err(RoomError::InvalidLimit(max_participants));
        }
        let provider = RoomProvider::new()?;
        let signer = member.signer().duplicate();
        let meta = RoomMetadata { name: name.to_owned(), max_participants, suite: RoomSuite::xwing(), access_key };
        let extensions = Extensions::single(meta.to_extension()).map_err(mls_err("metadata extension"))?;
        let group = MlsGroup::builder()
            .with_group_id(GroupId::from_slice(&id))
            .ciphersuite(CIPHERSUITE)
            .use_ratchet_tree_extension(true)
            .with_wire_format_policy(MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .with_capabilities(capabilities())
            .with_group_context_extensions(extensions)
            .build(&provider, &signer, credential_with_key(member.user(), &signer))
            .map_err(mls_err("create group"))?;
        Ok(Self { id: RoomId(id.to_vec()), user: member.user().clone(), signer, provider, group, meta })
    }

    fn from_group(user: UserId, signer: MlsSigner, provider: RoomProvider, group: MlsGroup) -> Result<Self, RoomError> {
        let meta = RoomMetadata::from_extensions(group.extensions())?;
        meta.suite.ciphersuite()?;
        if group.ciphersuite() != CIPHERSUITE {
            return Err(RoomError::UnsupportedSuite(u16::from(group.ciphersuite())));
        }
        let id = RoomId(group.group_id().as_slice().to_vec());
        Ok(Self { id, user, signer, provider, group, meta })
    }

    /// Joins a room from a Welcome addressed to one of `member`'s key
    /// packages. The key package's private keys move from the member into the
    /// room (a key package is used once).
    pub fn join_from_welcome(member: &mut Member, welcome: &[u8]) -> Result<Self, RoomError> {
        let welcome: Welcome = match decode(welcome)? {
            MlsMessageBodyIn::Welcome(w) => w,
            _ => return Err(RoomError::UnexpectedMessage { expected: "Welcome" }),
        };
        let provider = RoomProvider::new()?;
        let mut found = None;
        for secrets in welcome.secrets() {
            let kp_ref = secrets.new_member();
            let bundle: Option<KeyPackageBundle> =
                member.provider().storage().key_package(&kp_ref).map_err(mls_err("load key package"))?;
            if let Some(bundle) = bundle {
                found = Some((kp_ref, bundle));
                break;
            }
        }
        let (kp_ref, bundle): (KeyPackageRef, KeyPackageBundle) = found.ok_or(RoomError::NoMatchingKeyPackage)?;
        provider.storage().write_key_package(&kp_ref, &bundle).map_err(mls_err("store key package"))?;
        let group = StagedWelcome::new_from_welcome(&provider, &join_config(), welcome, None)
            .map_err(mls_err("process welcome"))?
            .into_group(&provider)
            .map_err(mls_err("join from welcome"))?;
        // Used: remove it from the member so it cannot be accepted twice.
        member.provider().storage().delete_key_package(&kp_ref).map_err(mls_err("delete key package"))?;
        Self::from_group(member.user().clone(), member.signer().duplicate(), provider, group)
    }

    /// Joins a room without any member online: from the sealed GroupInfo the
    /// relay keeps (see [`Room::group_info`]) and the room's access key. The
    /// participant limit recorded in the room is checked before the commit is
    /// released; returns the room and the external commit to send.
    pub fn join_external(
        member: &Member,
        sealed_group_info: &[u8],
        access_key: &RoomAccessKey,
    ) -> Result<(Self, Vec<u8>), RoomError> {
        Self::join_external_inner(member, sealed_group_info, access_key, true)
    }

    /// `enforce_limit = false` only in tests, to play a client that ignores the limit.
    fn join_external_inner(
        member: &Member,
        sealed_group_info: &[u8],
        access_key: &RoomAccessKey,
        enforce_limit: bool,
    ) -> Result<(Self, Vec<u8>), RoomError> {
        let provider = RoomProvider::new()?;
        let (room_id, group_info) = open_group_info(&provider, access_key, sealed_group_info)?;
        let vgi = match decode(&group_info)? {
            MlsMessageBodyIn::GroupInfo(gi) => gi,
            _ => return Err(RoomError::UnexpectedMessage { expected: "GroupInfo" }),
        };
        if vgi.group_id().as_slice() != room_id.as_slice() {
            return Err(RoomError::WrongRoom);
        }
        if vgi.ciphersuite() != CIPHERSUITE {
            return Err(RoomError::UnsupportedSuite(u16::from(vgi.ciphersuite())));
        }
        // Unverified here; the builder verifies the signature below.
        let meta = RoomMetadata::from_extensions(vgi.group_context().extensions())?;
        let signer = member.signer().duplicate();
        let (group, bundle) = MlsGroup::external_commit_builder()
            .with_config(join_config())
            .build_group(&provider, vgi, credential_with_key(member.user(), &signer))
            .map_err(mls_err("external join"))?
            .leaf_node_parameters(LeafNodeParameters::builder().with_capabilities(capabilities()).build())
            .load_psks(provider.storage())
            .map_err(mls_err("external join"))?
            .build(provider.rand(), provider.crypto(), &signer, |_| true)
            .map_err(mls_err("external join"))?
            .finalize(&provider)
            .map_err(mls_err("external join"))?;
        let members = group.members().count();
        if enforce_limit && members > meta.max_participants as usize {
            return Err(RoomError::RoomFull { members, max: meta.max_participants });
        }
        let commit = encode(&bundle.into_commit())?;
        let room = Self::from_group(member.user().clone(), signer, provider, group)?;
        Ok((room, commit))
    }

    /// The current GroupInfo (with the ratchet tree), sealed under the room's
    /// access key, for the relay to keep for external joins. Publish a new one
    /// after every epoch change.
    pub fn group_info(&self) -> Result<Vec<u8>, RoomError> {
        let gi = self
            .group
            .export_group_info(self.provider.crypto(), &self.signer, true)
            .map_err(mls_err("export group info"))?;
        seal_group_info(&self.provider, &self.meta.access_key, &self.id.0, &encode(&gi)?)
    }

    /// The key that opens [`Room::group_info`]; give it (end-to-end) to whoever
    /// may join externally.
    pub fn access_key(&self) -> RoomAccessKey {
        self.meta.access_key.clone()
    }

    fn ensure_active(&self) -> Result<(), RoomError> {
        if self.group.is_active() { Ok(()) } else { Err(RoomError::NotAMember) }
    }

    fn check_limit(&self, members: usize) -> Result<(), RoomError> {
        if members > self.meta.max_participants as usize {
            return Err(RoomError::RoomFull { members, max: self.meta.max_participants });
        }
        Ok(())
    }

    /// Adds the owner of `key_package` (an `MLSMessage` from
    /// [`Member::generate_key_packages`]); returns `(commit, welcome)`: the
    /// commit goes to the room, the Welcome to the new member.
    pub fn add_member(&mut self, key_package: &[u8]) -> Result<(Vec<u8>, Vec<u8>), RoomError> {
        self.add_members(&[key_package])
    }

    /// Adds several members in one commit; the one Welcome goes to all of them.
    pub fn add_members(&mut self, key_packages: &[&[u8]]) -> Result<(Vec<u8>, Vec<u8>), RoomError> {
        self.ensure_active()?;
        let kps = key_packages.iter().map(|b| self.key_package(b)).collect::<Result<Vec<_>, _>>()?;
        self.commit_adds(&kps)
    }

    /// Adds `user` from a key package they published with
    /// [`Member::publishable_key_packages`]: the key package must name
    /// `user`, and `identity` — `user`'s hybrid identity key as this client
    /// verified it — must have bound its MLS signature key (so a relay cannot
    /// slip in a key package of its own). Returns `(commit, welcome)`.
    pub fn add_published(
        &mut self,
        published: &[u8],
        user: &UserId,
        identity: &pqc_crypto::sign::HybridVerifyingKey,
    ) -> Result<(Vec<u8>, Vec<u8>), RoomError> {
        self.ensure_active()?;
        let mut r = Reader::new(published, "published key package");
        let (kp_bytes, binding) = (r.bytes()?, r.bytes()?);
        r.finish()?;
        let kp = self.key_package(kp_bytes)?;
        let owner = UserId::from_credential(kp.leaf_node().credential())?;
        if &owner != user {
            return Err(RoomError::Malformed { what: "key package", reason: format!("it names {owner}, not {user}") });
        }
        let key: [u8; 32] = kp
            .leaf_node()
            .signature_key()
            .as_slice()
            .try_into()
            .map_err(|_| RoomError::Malformed { what: "key package", reason: "signature key length".into() })?;
        crate::identity::verify_identity_binding(identity, user, &key, binding)?;
        self.commit_adds(&[kp])
    }

    /// Decodes and validates one key package of the room's suite.
    fn key_package(&self, bytes: &[u8]) -> Result<openmls::prelude::KeyPackage, RoomError> {
        let kp: KeyPackageIn = match decode(bytes)? {
            MlsMessageBodyIn::KeyPackage(kp) => kp,
            _ => return Err(RoomError::UnexpectedMessage { expected: "KeyPackage" }),
        };
        let kp =
            kp.validate(self.provider.crypto(), ProtocolVersion::Mls10).map_err(mls_err("validate key package"))?;
        if kp.ciphersuite() != CIPHERSUITE {
            return Err(RoomError::UnsupportedSuite(u16::from(kp.ciphersuite())));
        }
        Ok(kp)
    }

    fn commit_adds(&mut self, kps: &[openmls::prelude::KeyPackage]) -> Result<(Vec<u8>, Vec<u8>), RoomError> {
        self.check_limit(self.group.members().count() + kps.len())?;
        let (commit, welcome, _) =
            self.group.add_members(&self.provider, &self.signer, kps).map_err(mls_err("add member"))?;
        self.group.merge_pending_commit(&self.provider).map_err(mls_err("merge commit"))?;
        Ok((encode(&commit)?, encode(&welcome)?))
    }

    /// Removes `user` from the room; returns the commit.
    pub fn remove(&mut self, user: &UserId) -> Result<Vec<u8>, RoomError> {
        self.ensure_active()?;
        let leaves: Vec<LeafNodeIndex> = self
            .group
            .members()
            .filter(|m| UserId::from_credential(&m.credential).is_ok_and(|u| &u == user))
            .map(|m| m.index)
            .collect();
        if leaves.is_empty() {
            return Err(RoomError::UnknownMember(user.clone()));
        }
        let (commit, _, _) =
            self.group.remove_members(&self.provider, &self.signer, &leaves).map_err(mls_err("remove member"))?;
        self.group.merge_pending_commit(&self.provider).map_err(mls_err("merge commit"))?;
        encode(&commit)
    }

    /// Asks to leave: returns a remove proposal for this member. Another
    /// member commits it ([`Room::commit_pending`]); until then this member
    /// keeps receiving, and once it processes that commit it gets
    /// [`Event::Removed`].
    pub fn leave(&mut self) -> Result<Vec<u8>, RoomError> {
        self.ensure_active()?;
        let proposal = self.group.leave_group(&self.provider, &self.signer).map_err(mls_err("leave"))?;
        encode(&proposal)
    }

    /// Commits the queued proposals (e.g. someone's leave), if any; returns the commit.
    pub fn commit_pending(&mut self) -> Result<Option<Vec<u8>>, RoomError> {
        self.ensure_active()?;
        if !self.group.has_pending_proposals() {
            return Ok(None);
        }
        let (commit, _, _) = self
            .group
            .commit_to_pending_proposals(&self.provider, &self.signer)
            .map_err(mls_err("commit proposals"))?;
        self.group.merge_pending_commit(&self.provider).map_err(mls_err("merge commit"))?;
        Ok(Some(encode(&commit)?))
    }

    /// Rotates this member's leaf key material (post-compromise security);
    /// returns the commit. Send one periodically.
    pub fn self_update(&mut self) -> Result<Vec<u8>, RoomError> {
        self.ensure_active()?;
        let bundle = self
            .group
            .self_update(&self.provider, &self.signer, LeafNodeParameters::default())
            .map_err(mls_err("self update"))?;
        self.group.merge_pending_commit(&self.provider).map_err(mls_err("merge commit"))?;
        encode(&bundle.into_commit())
    }

    /// Encrypts an application message for the room (an MLS `PrivateMessage`).
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, RoomError> {
        self.ensure_active()?;
        let msg = self.group.create_message(&self.provider, &self.signer, plaintext).map_err(mls_err("encrypt"))?;
        encode(&msg)
    }

    fn member_set(&self) -> BTreeSet<(u32, UserId)> {
        self.group
            .members()
            .filter_map(|m| UserId::from_credential(&m.credential).ok().map(|u| (m.index.u32(), u)))
            .collect()
    }

    /// Processes one message from the relay (handshake or application), in
    /// relay order. Errors leave the room state unchanged.
    pub fn process(&mut self, message: &[u8]) -> Result<Vec<Event>, RoomError> {
        let protocol: ProtocolMessage = match decode(message)? {
            MlsMessageBodyIn::PublicMessage(m) => m.into(),
            MlsMessageBodyIn::PrivateMessage(m) => m.into(),
            _ => return Err(RoomError::UnexpectedMessage { expected: "PublicMessage or PrivateMessage" }),
        };
        if protocol.group_id().as_slice() != self.id.0.as_slice() {
            return Err(RoomError::WrongRoom);
        }
        self.ensure_active()?;
        let processed = self.group.process_message(&self.provider, protocol).map_err(mls_err("process message"))?;
        let sender_kind = processed.sender().clone();
        let sender = UserId::from_credential(processed.credential())?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                Ok(vec![Event::Message { sender, plaintext: app.into_bytes() }])
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                self.group
                    .store_pending_proposal(self.provider.storage(), *proposal)
                    .map_err(mls_err("queue proposal"))?;
                Ok(vec![Event::ProposalQueued { by: sender }])
            }
            // Our own messages echoed by the relay: already applied locally.
            ProcessedMessageContent::OwnPendingCommit | ProcessedMessageContent::OwnPrivateMessage => Ok(Vec::new()),
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                Err(RoomError::UnexpectedMessage { expected: "no external proposals (use an external commit)" })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let before = self.member_set();
                let joiner = usize::from(matches!(sender_kind, Sender::NewMemberCommit));
                let after_count = (before.len() + staged.add_proposals().count() + joiner)
                    .saturating_sub(staged.remove_proposals().count());
                // Every honest member applies the same rule, so an over-limit
                // commit is rejected by all and never becomes the next epoch.
                self.check_limit(after_count)?;
                let removed = staged.self_removed();
                self.group.merge_staged_commit(&self.provider, *staged).map_err(mls_err("merge commit"))?;
                if removed {
                    return Ok(vec![Event::Removed]);
                }
                // The metadata may have changed (e.g. a new limit).
                self.meta = RoomMetadata::from_extensions(self.group.extensions())?;
                let after = self.member_set();
                // An external commit by someone already in the room replaces
                // their old place (a resync): one event, not "left" and
                // "joined" (or nothing when the seat is the same).
                let rejoined = joiner == 1 && before.iter().any(|(_, u)| *u == sender);
                let mut events: Vec<Event> = before
                    .difference(&after)
                    .filter(|(_, u)| !(rejoined && *u == sender))
                    .map(|(_, u)| Event::MemberLeft(u.clone()))
                    .collect();
                events.extend(
                    after
                        .difference(&before)
                        .filter(|(_, u)| !(rejoined && *u == sender))
                        .map(|(_, u)| Event::MemberJoined(u.clone())),
                );
                if rejoined {
                    events.push(Event::MemberRejoined(sender));
                }
                events.push(Event::EpochChanged { epoch: self.epoch() });
                Ok(events)
            }
        }
    }

    /// The opaque id the relay routes by.
    pub fn id(&self) -> &RoomId {
        &self.id
    }
    /// The room name (from the end-to-end group state).
    pub fn name(&self) -> &str {
        &self.meta.name
    }
    /// The participant limit (from the end-to-end group state).
    pub fn max_participants(&self) -> u32 {
        self.meta.max_participants
    }
    /// The cipher suite record.
    pub fn suite(&self) -> &RoomSuite {
        &self.meta.suite
    }
    /// This client's user name.
    pub fn user(&self) -> &UserId {
        &self.user
    }
    /// The current members, in leaf order.
    pub fn members(&self) -> Vec<UserId> {
        self.member_set().into_iter().map(|(_, u)| u).collect()
    }
    /// The current MLS epoch.
    pub fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }
    /// Whether this client is still a member.
    pub fn is_active(&self) -> bool {
        self.group.is_active()
    }

    /// MLS exporter (RFC 9420 §8.5): a secret of `len` bytes for `label` and
    /// `context`, the same for every member in this epoch. Keys the room's
    /// media (SFrame) later.
    pub fn export_secret(&self, label: &str, context: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>, RoomError> {
        self.group
            .export_secret(self.provider.crypto(), label, context, len)
            .map(Zeroizing::new)
            .map_err(mls_err("export secret"))
    }

    /// Saves the room as a versioned byte string (user name, MLS signature
    /// seed, the OpenMLS store). It contains secrets: encrypt it at rest.
    pub fn export_state(&self) -> Result<Vec<u8>, RoomError> {
        let mut w = Writer::default();
        w.raw(ROOM_STATE_MAGIC);
        w.u16(ROOM_STATE_VERSION);
        w.bytes(self.user.as_str().as_bytes());
        w.raw(self.signer.seed());
        w.bytes(&self.id.0);
        self.provider.write_storage(&mut w)?;
        Ok(crate::codec::append_digest(w.0))
    }

    /// Restores a room saved by [`Room::export_state`].
    ///
    /// The saved form ends with a SHA-256 digest of the rest, checked before
    /// anything is parsed: OpenMLS's storage loader panics on some malformed
    /// records (found by the `rooms_message` fuzz target), so only an intact
    /// state reaches it, and the load is also fenced with `catch_unwind`.
    pub fn import_state(bytes: &[u8]) -> Result<Self, RoomError> {
        let bytes = crate::codec::check_digest(bytes, "room state")?;
        let mut r = Reader::new(bytes, "room state");
        if r.take(4)? != ROOM_STATE_MAGIC {
            return Err(RoomError::CorruptState("not a room state"));
        }
        let version = r.u16()?;
        if version != ROOM_STATE_VERSION {
            return Err(RoomError::UnsupportedStateVersion(version));
        }
        let user = UserId::new(r.string()?)?;
        let signer = MlsSigner::from_seed(r.array()?);
        let id = r.bytes()?.to_vec();
        let provider = RoomProvider::read_storage(&mut r)?;
        r.finish()?;
        let group_id = GroupId::from_slice(&id);
        let loaded =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| MlsGroup::load(provider.storage(), &group_id)))
                .map_err(|_| RoomError::CorruptState("saved group state could not be loaded"))?;
        let group =
            loaded.map_err(mls_err("load group"))?.ok_or(RoomError::CorruptState("group missing from saved state"))?;
        Self::from_group(user, signer, provider, group)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn tampered_saved_state_is_refused_without_panicking() {
        let member = Member::new("alice", [3u8; 32]).unwrap();
        let room = Room::create(&member, "lounge", 4).unwrap();
        let saved = room.export_state().unwrap();
        assert!(Room::import_state(&saved).is_ok());
        // Any changed byte fails the digest.
        let mut bad = saved.clone();
        bad[10] ^= 1;
        assert!(matches!(Room::import_state(&bad), Err(RoomError::CorruptState(_))));
        assert!(Room::import_state(&saved[..20]).is_err());
        // A change with a recomputed digest reaches OpenMLS's loader, which
        // may panic on it: that is caught and reported as a corrupt state.
        let body = &saved[..saved.len() - 32];
        for pos in (body.len() / 2..body.len()).step_by(97) {
            let mut b = body.to_vec();
            b[pos] ^= 0x5a;
            let _ = Room::import_state(&crate::codec::append_digest(b));
        }
    }

    #[test]
    fn members_reject_an_external_commit_over_the_limit() {
        let alice_id = Member::new("alice", [1; 32]).unwrap();
        let mut bob_id = Member::new("bob", [2; 32]).unwrap();
        let carol_id = Member::new("carol", [3; 32]).unwrap();
        let mut alice = Room::create(&alice_id, "pair", 2).unwrap();
        let kp = bob_id.generate_key_packages(1).unwrap().pop().unwrap();
        let (_, welcome) = alice.add_member(&kp).unwrap();
        let mut bob = Room::join_from_welcome(&mut bob_id, &welcome).unwrap();

        // A modified client skips its own check...
        let sealed = alice.group_info().unwrap();
        let (_carol, commit) = Room::join_external_inner(&carol_id, &sealed, &alice.access_key(), false).unwrap();
        // ...but every member refuses the commit and stays in its epoch.
        let epoch = alice.epoch();
        for room in [&mut alice, &mut bob] {
            assert!(matches!(room.process(&commit), Err(RoomError::RoomFull { members: 3, max: 2 })));
            assert_eq!(room.epoch(), epoch);
            assert_eq!(room.members().len(), 2);
        }
        let m = alice.encrypt(b"still fine").unwrap();
        assert_eq!(
            bob.process(&m).unwrap(),
            vec![Event::Message { sender: UserId::new("alice").unwrap(), plaintext: b"still fine".to_vec() }]
        );
    }
}
