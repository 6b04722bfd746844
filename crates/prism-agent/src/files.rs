//! REST file transfer: `GET|POST /files?path=` (envd's API) and `GET|PUT /tar?path=` (ours).
//! Everything streams; no file is ever held in memory. Errors use envd's REST shape
//! `{"code": <http status>, "message": "..."}`.

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::StreamBody;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use prism_proto::filesystem::UploadedEntry;
use prism_proto::{Code, ConnectError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::fsops::{chown_to, create_dirs, io_err};
use crate::paths;
use crate::server::{App, RespBody, bytes_response, query_param, request_user};
use crate::upload;
use crate::users::User;

const CHUNK: usize = 128 * 1024;

fn rest_error(e: &ConnectError) -> Response<RespBody> {
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "code": status.as_u16(), "message": e.message });
    bytes_response(status, "application/json", Bytes::from(body.to_string()))
}

fn target<B>(req: &Request<B>, user: &User) -> Result<PathBuf, ConnectError> {
    match query_param(req.uri(), "path") {
        Some(p) if !p.is_empty() => Ok(paths::resolve(&p, user)),
        _ => Err(ConnectError::new(
            Code::InvalidArgument,
            "the path query parameter is required",
        )),
    }
}

fn rest(r: Result<Response<RespBody>, ConnectError>) -> Result<Response<RespBody>, ConnectError> {
    Ok(r.unwrap_or_else(|e| rest_error(&e)))
}

/// `GET /files?path=`: the file's bytes.
pub async fn download(
    app: &Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, ConnectError> {
    rest(
        async {
            let user = request_user(&app.accounts, &req)?;
            let path = target(&req, &user)?;
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| io_err(e, &path))?;
            let md = file.metadata().await.map_err(|e| io_err(e, &path))?;
            if md.is_dir() {
                return Err(ConnectError::new(
                    Code::InvalidArgument,
                    format!("{} is a directory; use /tar", path.display()),
                ));
            }
            let chunks = futures_util::stream::unfold(Some(file), |f| async move {
                let mut f = f?;
                let mut buf = BytesMut::zeroed(CHUNK);
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(Frame::data(buf.freeze())), Some(f)))
                    }
                    Err(e) => Some((Err(e), None)),
                }
            });
            let mut resp = Response::new(UnsyncBoxBody::new(StreamBody::new(chunks)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/octet-stream"),
            );
            Ok(resp)
        }
        .await,
    )
}

/// `POST /files?path=`: a raw body, or multipart/form-data parts named by `path` or their
/// file names; parent directories are created; the answer lists the written files. The body
/// is read to its end before the answer, also after a refusal (see the `upload` module).
pub async fn upload(
    app: &Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, ConnectError> {
    let (head, rx, reader) = upload::split(req);
    let written = write_upload(app, &head, rx).await;
    let written = reader.finish(written).await.and_then(|w| {
        serde_json::to_vec(&w).map_err(|e| ConnectError::new(Code::Internal, e.to_string()))
    });
    rest(written.map(|json| bytes_response(StatusCode::OK, "application/json", Bytes::from(json))))
}

async fn write_upload(
    app: &App,
    req: &Request<()>,
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<Vec<UploadedEntry>, ConnectError> {
    let user = request_user(&app.accounts, req)?;
    let path = query_param(req.uri(), "path").filter(|p| !p.is_empty());
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut written = Vec::new();
    if ct.starts_with("multipart/form-data") {
        let boundary = multer::parse_boundary(ct)
            .map_err(|e| ConnectError::new(Code::InvalidArgument, format!("multipart: {e}")))?;
        let mut mp = multer::Multipart::new(upload::stream(rx), boundary);
        while let Some(mut field) = mp.next_field().await.map_err(multipart_err)? {
            let dest = match (&path, field.file_name()) {
                (Some(p), _) => paths::resolve(p, &user),
                (None, Some(name)) if !name.is_empty() => paths::resolve(name, &user),
                _ => {
                    return Err(ConnectError::new(
                        Code::InvalidArgument,
                        "a multipart file needs a path query parameter or a file name",
                    ));
                }
            };
            let mut file = create_file(&dest, &user).await?;
            while let Some(chunk) = field.chunk().await.map_err(multipart_err)? {
                file.write_all(&chunk).await.map_err(|e| io_err(e, &dest))?;
            }
            finish_file(file, &dest).await?;
            written.push(uploaded(&dest));
        }
    } else {
        let dest = paths::resolve(
            &path.ok_or_else(|| {
                ConnectError::new(
                    Code::InvalidArgument,
                    "the path query parameter is required",
                )
            })?,
            &user,
        );
        let mut gunzip = gzip_body(req.headers())?;
        let mut file = create_file(&dest, &user).await?;
        while let Some(data) = rx.recv().await {
            let data = match gunzip.as_mut() {
                Some(g) => inflate(g, &data)?,
                None => data,
            };
            file.write_all(&data).await.map_err(|e| io_err(e, &dest))?;
        }
        if let Some(g) = gunzip {
            let rest = g.finish().map_err(gzip_err)?;
            file.write_all(&rest).await.map_err(|e| io_err(e, &dest))?;
        }
        finish_file(file, &dest).await?;
        written.push(uploaded(&dest));
    }
    Ok(written)
}

/// A gzip decoder when the raw upload says `Content-Encoding: gzip` (envd's compressed
/// upload); other encodings are refused rather than stored compressed.
fn gzip_body(
    headers: &http::HeaderMap,
) -> Result<Option<flate2::write::GzDecoder<Vec<u8>>>, ConnectError> {
    match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        None | Some("" | "identity") => Ok(None),
        Some(e) if e.eq_ignore_ascii_case("gzip") => {
            Ok(Some(flate2::write::GzDecoder::new(Vec::new())))
        }
        Some(other) => Err(ConnectError::new(
            Code::InvalidArgument,
            format!("unsupported Content-Encoding {other:?}: send gzip or no encoding"),
        )),
    }
}

/// Feeds one compressed chunk and takes what it decompressed to so far.
fn inflate(g: &mut flate2::write::GzDecoder<Vec<u8>>, data: &[u8]) -> Result<Bytes, ConnectError> {
    use std::io::Write as _;
    g.write_all(data).map_err(gzip_err)?;
    Ok(Bytes::from(std::mem::take(g.get_mut())))
}

fn gzip_err(e: std::io::Error) -> ConnectError {
    ConnectError::new(Code::InvalidArgument, format!("bad gzip upload: {e}"))
}

fn multipart_err(e: multer::Error) -> ConnectError {
    ConnectError::new(Code::InvalidArgument, format!("multipart: {e}"))
}

fn uploaded(p: &Path) -> UploadedEntry {
    UploadedEntry {
        name: p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kind: "file".into(),
        path: p.to_string_lossy().into_owned(),
    }
}

async fn create_file(dest: &Path, user: &User) -> Result<tokio::fs::File, ConnectError> {
    if let Some(parent) = dest.parent() {
        let (parent, u) = (parent.to_path_buf(), user.clone());
        tokio::task::spawn_blocking(move || {
            create_dirs(&parent, &u).map_err(|e| io_err(e, &parent))
        })
        .await
        .map_err(|e| ConnectError::new(Code::Internal, e.to_string()))??;
    }
    let file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| io_err(e, dest))?;
    let (d, u) = (dest.to_path_buf(), user.clone());
    tokio::task::spawn_blocking(move || chown_to(&d, &u).map_err(|e| io_err(e, &d)))
        .await
        .map_err(|e| ConnectError::new(Code::Internal, e.to_string()))??;
    Ok(file)
}

async fn finish_file(mut file: tokio::fs::File, dest: &Path) -> Result<(), ConnectError> {
    file.flush().await.map_err(|e| io_err(e, dest))?;
    file.sync_data().await.map_err(|e| io_err(e, dest))
}

/// `GET /tar?path=DIR`: the directory's contents as a tar stream (entries named `./…`).
pub async fn tar_download(
    app: &Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, ConnectError> {
    rest(
        async {
            let user = request_user(&app.accounts, &req)?;
            let dir = target(&req, &user)?;
            let md = tokio::fs::metadata(&dir)
                .await
                .map_err(|e| io_err(e, &dir))?;
            if !md.is_dir() {
                return Err(ConnectError::new(
                    Code::InvalidArgument,
                    format!("{} is not a directory", dir.display()),
                ));
            }
            let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
            tokio::task::spawn_blocking(move || {
                let sink = io::BufWriter::with_capacity(CHUNK, ChannelWriter { tx: tx.clone() });
                let mut b = tar::Builder::new(sink);
                b.follow_symlinks(false);
                let res = b
                    .append_dir_all(".", &dir)
                    .and_then(|()| b.into_inner())
                    .and_then(|mut w| w.flush());
                if let Err(e) = res {
                    tracing::debug!(error = %e, dir = %dir.display(), "tar stream failed");
                    let _ = tx.blocking_send(Err(e));
                }
            });
            let frames = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|r| (r.map(Frame::data), rx))
            });
            let mut resp = Response::new(UnsyncBoxBody::new(StreamBody::new(frames)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-tar"),
            );
            Ok(resp)
        }
        .await,
    )
}

struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `PUT /tar?path=DIR`: unpacks a tar stream into DIR (created if missing). Refuses absolute
/// paths, `..`, device nodes and FIFOs; entries already written before a refusal stay.
pub async fn tar_upload(
    app: &Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, ConnectError> {
    let (head, rx, reader) = upload::split(req);
    let unpacked = unpack_upload(app, &head, rx).await;
    rest(reader.finish(unpacked).await.map(|()| {
        bytes_response(
            StatusCode::OK,
            "application/json",
            Bytes::from_static(b"{}"),
        )
    }))
}

async fn unpack_upload(
    app: &App,
    req: &Request<()>,
    rx: mpsc::Receiver<Bytes>,
) -> Result<(), ConnectError> {
    let user = request_user(&app.accounts, req)?;
    let dir = target(req, &user)?;
    {
        let (d, u) = (dir.clone(), user.clone());
        tokio::task::spawn_blocking(move || create_dirs(&d, &u).map_err(|e| io_err(e, &d)))
            .await
            .map_err(|e| ConnectError::new(Code::Internal, e.to_string()))??;
    }
    tokio::task::spawn_blocking(move || unpack(upload::BlockingReader::new(rx), &dir, &user))
        .await
        .map_err(|e| ConnectError::new(Code::Internal, e.to_string()))?
}

fn refuse(msg: String) -> ConnectError {
    ConnectError::new(Code::InvalidArgument, msg)
}

fn check_relative(p: &Path, what: &str) -> Result<(), ConnectError> {
    for c in p.components() {
        match c {
            Component::ParentDir => {
                return Err(refuse(format!("tar {what} {} contains '..'", p.display())));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(format!("tar {what} {} is absolute", p.display())));
            }
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    Ok(())
}

fn unpack(reader: impl Read, dir: &Path, user: &User) -> Result<(), ConnectError> {
    let tar_err =
        |e: io::Error| ConnectError::new(Code::InvalidArgument, format!("bad tar stream: {e}"));
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let path = entry.path().map_err(tar_err)?.into_owned();
        check_relative(&path, "entry")?;
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            return Err(refuse(format!(
                "tar entry {} is a device node or FIFO",
                path.display()
            )));
        }
        if kind.is_hard_link()
            && let Some(link) = entry.link_name().map_err(tar_err)?
        {
            check_relative(&link, "hard link target")?;
        }
        let unpacked = entry.unpack_in(dir).map_err(|e| {
            ConnectError::new(
                Code::InvalidArgument,
                format!("tar entry {}: {e}", path.display()),
            )
        })?;
        if !unpacked {
            return Err(refuse(format!(
                "tar entry {} escapes the target directory",
                path.display()
            )));
        }
        let dest = dir.join(&path);
        if dest != dir {
            chown_to(&dest, user).map_err(|e| io_err(e, &dest))?;
        }
    }
    Ok(())
}
