//! The action-conditioned request of [`Cosmos3Plugin`]: the caption, the encoded canvas,
//! the joint video/action denoising loop, the decode and the predicted actions.

use super::*;

impl Cosmos3Plugin {
    /// An action-conditioned request (see [`crate::models::cosmos3::action`]): the caption, the encoded
    /// canvas, the joint video/action loop, the decode and the predicted actions.
    pub(super) fn step_action(
        &mut self,
        request: &Cosmos3Request,
        a: &ActionRequest,
        progress: &dyn Progress,
    ) -> Result<Cosmos3Output> {
        if self.fixed_step.is_some() {
            return Err(Error::invalid(
                "action_mode",
                "distilled checkpoints have no action modes",
            ));
        }
        let heads = self.transformer.action_heads().ok_or_else(|| {
            Error::invalid(
                "action_mode",
                format!(
                    "{} has no action heads (its transformer config has action_gen false)",
                    self.args.checkpoint_dir.display()
                ),
            )
        })?;
        let action_dim = heads.dim();
        if self.mesh.cfg.size() != 1 {
            return Err(Error::invalid("cfg", "action modes run on one cfg group"));
        }
        let (pixels, field) = request.action_pixels()?;
        let (emb, canvas) = a.validate(&pixels, field)?;
        let pixels = action::fit_to_canvas(&pixels, canvas)?;
        if emb.raw_dim > action_dim {
            return Err(Error::invalid(
                "domain",
                format!(
                    "{} actions are {} wide, the checkpoint's action_dim is {action_dim}",
                    emb.name, emb.raw_dim
                ),
            ));
        }
        let mut timings = Vec::new();
        let schedule = self.schedule(request.steps)?;

        let t = Instant::now();
        let (pos, neg) = match &request.prompt {
            Prompt::Tokens { pos, neg } => (pos.clone(), neg.clone()),
            Prompt::Text {
                prompt,
                negative_prompt,
                ..
            } => {
                let caption = a.caption(prompt, request.fps, canvas.0, canvas.1)?;
                let negative = negative_prompt.as_deref().unwrap_or("");
                self.processor()?
                    .encode_raw_pair(&caption, negative, a.num_frames())?
            }
        };
        timings.push(("tokenize".to_string(), t.elapsed()));

        let t = Instant::now();
        let (h, w) = (pixels.dim(3)?, pixels.dim(4)?);
        let frames = a.num_frames();
        // The content in whole latent pixels (the crop of the encoded canvas below).
        let latent = pixel_to_latent_shape(frames, 16 * (h / 16).max(1), 16 * (w / 16).max(1))?;
        // The encoder is causal: latent frame 0 needs pixel frame 0 alone.
        let (encode_frames, frame_indexes) = match a.mode {
            ActionMode::InverseDynamics => (frames, (0..latent.t).collect()),
            _ => (1, vec![0]),
        };
        let enc = self
            .vae
            .encoder
            .as_ref()
            .ok_or_else(|| Error::msg("the VAE encoder is not loaded"))?;
        let clip = action::canvas_frames(&pixels, encode_frames, canvas)?
            .to_dtype(self.dtype)?
            .to_device(&self.device)?;
        let encoded = enc.encode(&clip)?.to_dtype(DType::F32)?;
        let conditioning = Conditioning {
            latents: action::crop_to_content(&encoded, h, w)?,
            frame_indexes,
        };
        timings.push(("encode".to_string(), t.elapsed()));

        let t = Instant::now();
        let here = GuidedVelocity::branches(request.guidance_scale, 0, 1);
        progress.stage("text", 1 + here.uncond as usize);
        let cond = self.transformer.und(&pos)?;
        progress.step();
        let uncond = if here.uncond {
            let kv = self.transformer.und(&neg)?;
            progress.step();
            Some(kv)
        } else {
            None
        };
        progress.done("text", t.elapsed());
        timings.push(("text".to_string(), t.elapsed()));

        let t = Instant::now();
        let channels = self.transformer.config().latent_channel;
        let start = denoise::initial_latents(
            &Start {
                latent,
                channels,
                sound: None,
                seed: request.seed,
                init_noise: request.init_noise.as_ref(),
                conditioning: Some(&conditioning),
            },
            &self.device,
        )?;
        let (clean, action_noisy) = a.clean_actions(action_dim)?;
        let shape = [a.chunk, action_dim];
        let noise = match &a.init_noise {
            Some(n) if n.dims() != shape => {
                return Err(Error::invalid(
                    "init_noise",
                    format!(
                        "`action` has shape {:?}, the request needs {shape:?}",
                        n.dims()
                    ),
                ))
            }
            Some(n) => n.to_dtype(DType::F32)?,
            None => {
                // The seed's generator continued after the video noise.
                let video_len = channels * latent.t * latent.h * latent.w;
                let all =
                    noise::standard_normal(request.seed, &[video_len + a.chunk * action_dim])?;
                Tensor::from_vec(
                    all[video_len..].to_vec(),
                    &shape[..],
                    &candle_core::Device::Cpu,
                )?
            }
        };
        let keep: Vec<f32> = action_noisy
            .iter()
            .map(|&n| if n { 1.0 } else { 0.0 })
            .collect();
        let keep = Tensor::from_vec(keep, (a.chunk, 1), &candle_core::Device::Cpu)?;
        let action0 = (noise.broadcast_mul(&keep)? + clean.broadcast_mul(&(1.0 - &keep)?)?)?;
        let action0 =
            action::zero_padding_columns(&action0, emb.raw_dim)?.to_device(&self.device)?;
        let denoiser = ActionDenoiser {
            model: &self.transformer,
            cond: &cond,
            uncond: uncond.as_ref(),
            guidance_scale: request.guidance_scale,
            interval: request.guidance_interval,
            fps: request.fps,
            dtype: self.dtype,
            domain: emb.id,
            raw_dim: emb.raw_dim,
        };
        let out = denoiser.denoise(
            &schedule,
            ActionLatents {
                video: start.video,
                action: action0,
            },
            &conditioning,
            &action_noisy,
            progress,
        )?;
        timings.push(("denoise".to_string(), t.elapsed()));

        let video = self.decode_stage(&out.video, progress, &mut timings)?;
        let actions = if a.mode.predicts_actions() {
            Some(out.action.narrow(1, 0, emb.raw_dim)?.contiguous()?)
        } else {
            None
        };
        Ok(Cosmos3Output {
            video,
            audio: None,
            latents: out.video,
            sound_latents: None,
            actions,
            timings,
        })
    }
}
