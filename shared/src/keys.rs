//! Where things live in R2 and KV. Keys are deterministic, so a repeated write lands on the same
//! object instead of making a second one.

use crate::ids::{TaskId, UploadId, UserId};
use crate::model::Model;

/// Image types we store, with the extension used in keys.
pub const IMAGE_TYPES: [(&str, &str); 4] = [
    ("image/png", "png"),
    ("image/jpeg", "jpg"),
    ("image/webp", "webp"),
    ("image/gif", "gif"),
];

/// The extension for an image content type (parameters such as `; charset` ignored).
pub fn image_extension(content_type: &str) -> Option<&'static str> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    IMAGE_TYPES
        .iter()
        .find(|(ct, _)| *ct == essence)
        .map(|(_, ext)| *ext)
}

/// The image type the bytes actually are, from their magic numbers.
pub fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else {
        None
    }
}

/// `result/{model}/{task_id}/result_{n}.{ext}`: a stored generation result (seed layout).
pub fn result_key(model: Model, task: &TaskId, n: usize, ext: &str) -> String {
    format!("result/{}/{task}/result_{n}.{ext}", model.as_str())
}

/// `cache/{user_id}/{upload_id}.{ext}`: an uploaded input image. The client's file name is
/// never part of a key.
pub fn upload_key(user: &UserId, upload: &UploadId, ext: &str) -> String {
    format!("cache/{user}/{upload}.{ext}")
}

/// `dead-letters/{id}.json`: a dead message body too large for its D1 row.
pub fn dead_letter_body_key(id: &str) -> String {
    format!("dead-letters/{id}.json")
}

/// KV: the final status of a task, written once it is completed or failed.
pub fn task_status_key(task: &TaskId) -> String {
    format!("task-status:{task}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_keys_follow_the_seed_layout() {
        let t = TaskId::parse("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d").unwrap();
        assert_eq!(
            result_key(Model::Kie4o, &t, 0, "png"),
            "result/kie_4o/0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/result_0.png"
        );
        let u = UserId::parse("11111111-2222-4333-8444-555555555555").unwrap();
        let up = UploadId::parse("66666666-7777-4888-8999-aaaaaaaaaaaa").unwrap();
        let k = upload_key(&u, &up, "jpg");
        assert_eq!(
            k,
            "cache/11111111-2222-4333-8444-555555555555/66666666-7777-4888-8999-aaaaaaaaaaaa.jpg"
        );
        assert!(k.starts_with(&format!("cache/{u}/")));
        assert_eq!(
            task_status_key(&t),
            "task-status:0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
        );
    }

    #[test]
    fn content_types_and_magic_numbers() {
        assert_eq!(image_extension("image/PNG; q=1"), Some("png"));
        assert_eq!(image_extension("image/jpeg"), Some("jpg"));
        assert_eq!(image_extension("text/html"), None);
        assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff_image(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_image(b"<html>"), None);
        assert_eq!(sniff_image(b""), None);
    }
}
