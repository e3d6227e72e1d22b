//! The authors' side: `vkhost plugin push` (a component to an OCI registry as a wasm artifact,
//! signed with `--key` the way cosign signs), `vkhost plugin sign` (the detached signature of a
//! file) and `vkhost plugin keygen` (an ECDSA P-256 key pair both accept, as cosign does).

use std::path::{Path, PathBuf};

use crate::plugin::contract::{self, Contract};
use crate::plugin::source::oci::OciRef;
use crate::plugin::source::signature::{self, CosignSignature, Signer, simple_signing_payload};

/// Push a provider component to an OCI registry (and sign it).
#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    /// The component file (`*.wasm`).
    pub file: PathBuf,
    /// Where to: `oci://registry/repository:tag`. Plain HTTP for loopback registries only;
    /// credentials from VKHOST_REGISTRY_USERNAME and VKHOST_REGISTRY_PASSWORD.
    pub reference: String,
    /// Sign the pushed digest with this private key (PEM, ECDSA P-256; `vkhost plugin keygen`):
    /// a cosign signature under the `sha256-<hex>.sig` tag.
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// Write the detached signature `FILE.sig` a `path` source with `public_key` requires.
#[derive(Debug, Clone, clap::Args)]
pub struct SignArgs {
    /// The component file (`*.wasm`).
    pub file: PathBuf,
    /// The private key (PEM, ECDSA P-256).
    #[arg(long)]
    pub key: PathBuf,
}

/// Write a new signing key pair: PREFIX.key (private, mode 0600) and PREFIX.pub.
#[derive(Debug, Clone, clap::Args)]
pub struct KeygenArgs {
    /// The path prefix of the two files.
    #[arg(default_value = "vkhost-plugin")]
    pub prefix: PathBuf,
}

/// Pushes (and signs); prints the pinned reference. Returns the exit code.
pub async fn run_push(args: PushArgs) -> anyhow::Result<i32> {
    let bytes = std::fs::read(&args.file).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    // Nothing that is not a provider component goes out under a name the daemon will pull.
    match contract::read(&bytes) {
        Contract::Version(_) => {}
        Contract::NotAComponent(why) | Contract::NoProviderExports(why) => {
            eprintln!("error: {} is not a provider component: {why}", args.file.display());
            return Ok(1);
        }
    }
    let signer = args.key.as_deref().map(Signer::from_file).transpose()?;
    let target = OciRef::parse(&args.reference)?;
    if target.pinned_digest().is_some() {
        eprintln!("error: push to a tag (oci://registry/repository:tag), not to a digest");
        return Ok(2);
    }
    let title = args.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let repository = target.repository();
    let sign = |digest: &str| {
        let payload = simple_signing_payload(&repository, digest);
        let signer = signer.as_ref().expect("called with a key");
        CosignSignature { signature: signer.sign(&payload), payload }
    };
    // Signed before the tag moves, so no daemon polling it sees the version unsigned.
    let digest =
        target.push(&bytes, &title, signer.as_ref().map(|_| &sign as &dyn Fn(&str) -> CosignSignature)).await?;
    if signer.is_some() {
        println!("signed  {repository}:{}", crate::plugin::source::oci::signature_tag(&digest));
    }
    println!("pushed  {} ({} bytes)", target.pinned(&digest), bytes.len());
    Ok(0)
}

/// Writes `FILE.sig`. Returns the exit code.
pub fn run_sign(args: SignArgs) -> anyhow::Result<i32> {
    let signer = Signer::from_file(&args.key)?;
    let bytes = std::fs::read(&args.file).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let out = signature::detached_signature_path(&args.file);
    std::fs::write(&out, format!("{}\n", signer.sign(&bytes)))
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(0)
}

/// Writes a key pair. Returns the exit code.
pub fn run_keygen(args: KeygenArgs) -> anyhow::Result<i32> {
    let (private, public) = Signer::generate();
    let key = with_extension(&args.prefix, "key");
    let pubkey = with_extension(&args.prefix, "pub");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&key).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    std::io::Write::write_all(&mut file, private.as_bytes())?;
    std::fs::write(&pubkey, public).map_err(|e| anyhow::anyhow!("{}: {e}", pubkey.display()))?;
    println!("private key {} (keep it secret: it signs plugin versions)", key.display());
    println!("public key  {} (the daemon's [plugin] public_key)", pubkey.display());
    Ok(0)
}

fn with_extension(prefix: &Path, ext: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(ext);
    PathBuf::from(name)
}
