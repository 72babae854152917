//! Tests of the sandbox generator.

use super::pki::random_serial;
use super::*;

#[test]
fn written_durations_read_back_as_the_config_parses_them() {
    for secs in [60 * 86_400, 7_200, 360, 90, 86_401] {
        let d = Duration::from_secs(secs);
        assert_eq!(duration::parse(&duration::format(d)), Ok(d), "{secs}s");
    }
}

#[test]
fn policy_windows_fit_the_leaf_lifetime() {
    let w = LeafTiming::for_ttl(DEFAULT_LEAF_TTL);
    assert_eq!(
        (w.notify, w.renew, w.emergency),
        (NOTIFY_BEFORE, RENEW_BEFORE, EMERGENCY_BEFORE)
    );
    let w = LeafTiming::for_ttl(Duration::from_secs(600));
    assert_eq!(
        (w.notify, w.renew, w.emergency),
        (
            Duration::from_secs(360),
            Duration::from_secs(180),
            Duration::from_secs(60)
        )
    );
    // In between, each window is the smaller of its default and its share, so the order
    // notify >= renew >= emergency always holds.
    let w = LeafTiming::for_ttl(Duration::from_secs(90 * 86_400));
    assert_eq!(w.notify, Duration::from_secs(54 * 86_400));
    assert_eq!(w.renew, Duration::from_secs(27 * 86_400));
    assert_eq!(w.emergency, EMERGENCY_BEFORE);
}

#[test]
fn options_are_validated() {
    let ok = SandboxOptions::default();
    assert!(validate(&ok).is_ok());
    for name in ["", "UPPER", "a_b", "-a", "a-", "a..b", &"x".repeat(64)] {
        let opts = SandboxOptions {
            node_name: name.to_owned(),
            ..SandboxOptions::default()
        };
        assert!(validate(&opts).is_err(), "{name:?}");
    }
    let opts = SandboxOptions {
        leaf_ttl: Duration::from_millis(10),
        ..SandboxOptions::default()
    };
    assert!(validate(&opts).is_err());
}

#[test]
fn serials_are_positive_and_below_2_pow_63() {
    for _ in 0..100 {
        let bytes = random_serial(Path::new("test")).expect("random").to_bytes();
        let value = u64::from_be_bytes(bytes.try_into().expect("eight bytes"));
        assert!(value > 0 && value < 1 << 63);
    }
}
