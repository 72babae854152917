//! The certificate model: PEM and X.509 parsing, private keys, kubeconfigs and the file layouts of
//! kubeadm, the kubelet, RKE2 and k3s.

pub mod cert;
pub mod encode;
pub mod key;
pub mod kubeconfig;
pub mod layout;
pub mod pem;
pub mod secret;
pub mod verify;
