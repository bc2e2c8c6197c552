//! How a message record is stored: a version byte, then the record's rkyv archive.
//!
//! Version 1 (the first release) stored the bare archive of a record without the fields edits,
//! deletes, replies and reactions added. Such an archive never begins with 0xFF: its first byte is
//! the first byte of a string (UTF-8 never holds 0xFF, and the first field, the conversation id,
//! is ASCII). So [`RECORD_V2`] as a first byte marks the current layout, and anything else is read
//! as version 1 and converted: a data directory from before the change opens as it was.

use rkyv::rancor;
use shardchat_codec::{ArchivedMsgRecord, MsgKind, MsgRecord};
use shardchat_storage::StoreError;

/// The first byte of a record stored in the current layout.
pub const RECORD_V2: u8 = 0xFF;

/// A record as version 1 stored it (field for field the first release's `MsgRecord`).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
pub struct MsgRecordV1 {
    pub conv: String,
    pub id: u64,
    pub seq: u64,
    pub from: String,
    pub cmid: String,
    pub body: String,
    /// Version 1 knew the first four kinds; their archived values are the same.
    pub kind: MsgKind,
    pub ts: u64,
}

pub fn encode(r: &MsgRecord) -> Vec<u8> {
    let archive = rkyv::to_bytes::<rancor::Error>(r).expect("records always archive");
    let mut out = Vec::with_capacity(1 + archive.len());
    out.push(RECORD_V2);
    out.extend_from_slice(&archive);
    out
}

pub fn decode(bytes: &[u8]) -> Result<MsgRecord, StoreError> {
    let corrupt = |e: rancor::Error| StoreError::Corrupt(e.to_string());
    match bytes.split_first() {
        Some((&RECORD_V2, archive)) => {
            let archived = rkyv::access::<ArchivedMsgRecord, rancor::Error>(archive).map_err(corrupt)?;
            rkyv::deserialize::<MsgRecord, rancor::Error>(archived).map_err(corrupt)
        }
        _ => {
            let archived = rkyv::access::<ArchivedMsgRecordV1, rancor::Error>(bytes).map_err(corrupt)?;
            let v1 = rkyv::deserialize::<MsgRecordV1, rancor::Error>(archived).map_err(corrupt)?;
            let MsgRecordV1 { conv, id, seq, from, cmid, body, kind, ts } = v1;
            Ok(MsgRecord { conv, id, seq, from, cmid, body, kind, ts, ..Default::default() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardchat_codec::Reaction;

    #[test]
    fn version_1_records_never_start_with_the_mark_and_read_back_whole() {
        // Every length class of every string: inline (up to 8 bytes) and out of line, empty
        // bodies (deleted-like), multi-byte text.
        let strings = ["", "a", "abcdefgh", "abcdefghi", "ünïcödé ✓ and then some", &"x".repeat(300)];
        for conv in ["d:a:b", "g:1", "d:alice-long-name:bob-long-name", "g:1234567890123"] {
            for s in strings {
                for kind in [MsgKind::Text, MsgKind::Image, MsgKind::File, MsgKind::System] {
                    let v1 = MsgRecordV1 {
                        conv: conv.into(),
                        id: u64::MAX,
                        seq: 7,
                        from: s.into(),
                        cmid: s.into(),
                        body: s.into(),
                        kind,
                        ts: 1,
                    };
                    let bytes = rkyv::to_bytes::<rancor::Error>(&v1).unwrap();
                    assert_ne!(bytes[0], RECORD_V2, "{v1:?}");
                    // Nor as an index queue pointer: a queued copy of this age reads as a copy.
                    assert_ne!(bytes[0], crate::keys::INDEX_POINTER, "{v1:?}");
                    let back = decode(&bytes).unwrap();
                    let want = MsgRecord {
                        conv: conv.into(),
                        id: u64::MAX,
                        seq: 7,
                        from: s.into(),
                        cmid: s.into(),
                        body: s.into(),
                        kind,
                        ts: 1,
                        ..Default::default()
                    };
                    assert_eq!(back, want);
                }
            }
        }
    }

    #[test]
    fn current_records_keep_every_field() {
        let r = MsgRecord {
            conv: "g:1".into(),
            id: 3,
            seq: 9,
            from: "ann".into(),
            cmid: "c".into(),
            body: "edited".into(),
            kind: MsgKind::Text,
            ts: 4,
            target: None,
            reply_to: Some(2),
            edited_at: Some(5),
            deleted: false,
            reactions: vec![Reaction { user: "bob".into(), emoji: "👍".into() }],
            edits: vec![10, 11],
            media: Some(Box::new(shardchat_codec::Media {
                id: "ab".repeat(32),
                content_type: "image/png".into(),
                size: 9,
                name: "cat.png".into(),
                width: Some(4),
                height: Some(3),
                thumbnail: None,
            })),
        };
        assert_eq!(decode(&encode(&r)).unwrap(), r);
        assert!(decode(&[RECORD_V2, 1, 2, 3]).is_err(), "a damaged record is corrupt, not garbage");
    }
}
