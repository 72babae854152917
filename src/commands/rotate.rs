//! `certrotd rotate`: ask the running daemon for a rotation now.

use std::process::ExitCode;

use super::Outcome;
use super::status::{ask, unexpected};
use crate::cli::ClientArgs;
use crate::control::proto::{Request, Response};

/// Runs `certrotd rotate`: prints the id of the rotation the daemon started.
pub fn run(client: &ClientArgs, types: &[String], certs: &[String]) -> Outcome {
    let request = Request::Rotate {
        types: types.to_vec(),
        certs: certs.to_vec(),
    };
    match ask(client, request, "certrotd rotate")? {
        Response::Rotate { rotation_id } => {
            println!("{rotation_id}");
            // `--type etcd-ca` alone started a CA rotation, which `ca status` follows.
            let follow = if types.iter().any(|t| crate::ca::Track::parse(t).is_some()) {
                "`certrotd ca status`"
            } else {
                "`certrotd status` and `certrotd history`"
            };
            eprintln!("rotation {rotation_id} started; follow it with {follow}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(unexpected("certrotd rotate", &other)),
    }
}
