//! What the daemon knows of each track, for `certrotd ca status`, `status --cluster` and the
//! metrics: the CA on this node's disk, the cluster record as last read, and what blocks the
//! next phase. The daemon's loop rebuilds it at each CA poll; the control socket answers from it
//! without waiting for the loop (which may be inside a step).
//!
//! It holds the record as the domain type; the control protocol converts it and leaves out the
//! wrapped key and the certificates' PEM.

use time::OffsetDateTime;

use super::record::CaRecord;
use super::track::Track;

/// The CA of a track as this node's disk holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskCa {
    /// SHA-256 of the first certificate of the CA file.
    pub fingerprint: String,
    /// Its subject.
    pub subject: String,
    /// When it expires.
    pub not_after: OffsetDateTime,
    /// From when on it is rotated by itself (`[ca] rotate_before`).
    pub due_from: OffsetDateTime,
}

/// One track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackView {
    /// Which CA.
    pub track: Track,
    /// The CA on this node's disk (`None`: this node has no such CA, or it does not read).
    pub disk: Option<DiskCa>,
    /// Why the CA on disk could not be read, when it could not.
    pub disk_error: Option<String>,
    /// The cluster record as last read (`None`: never rotated).
    pub record: Option<CaRecord>,
    /// The order the members take their steps in (the etcd leader last), as last computed.
    pub order: Vec<String>,
    /// What blocks the next phase, as the coordinator would judge it now.
    pub blockers: Vec<String>,
    /// The last error of this node's turn on the track (reading the record, its step).
    pub error: Option<String>,
}

/// Every track.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaView {
    /// When the records were read (`None`: not yet).
    pub as_of: Option<OffsetDateTime>,
    /// The tracks, in `Track::ALL` order.
    pub tracks: Vec<TrackView>,
}

impl CaView {
    /// The view of `track`, if the daemon has one.
    pub fn track(&self, track: Track) -> Option<&TrackView> {
        self.tracks.iter().find(|t| t.track == track)
    }
}
